import { createRoute, z } from "@hono/zod-openapi";
import type { Services } from "../services.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const metricsRoute = createRoute({
  method: "get",
  path: "/metrics",
  summary: "Prometheus metrics (text exposition format 0.0.4): proxy traffic and latency, sandboxes, starts, releases, WebSockets, auth failures",
  responses: {
    200: {
      description: "the exposition text",
      content: { "text/plain": { schema: z.string().openapi({ example: 'hypervisor_proxy_requests_total{role="live",status="200"} 42' }) } },
    },
    ...errorResponses(401),
  },
});

export type MetricsRouteDeps = Pick<Services, "metrics">;

export function registerMetricsRoutes(app: OperatorApp, { metrics }: MetricsRouteDeps): void {
  app.openapi(metricsRoute, async (c) => {
    const text = await metrics.text();
    return c.body(text, 200, { "content-type": metrics.contentType, "cache-control": "no-store" }) as never;
  });
}
