export interface Identity {
  user: string | null;
  role: string;
  generation: string | null;
  version: string;
  slot: string | null;
}

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => HTML_ESCAPES[char] ?? char);
}

/**
 * Every URL on the page is relative (no leading slash) so the page keeps working when the proxy
 * serves it under a prefix such as `/dev/`; the one exception is the hypervisor's account page,
 * which is the same path whichever sandbox links to it.
 */
export function renderPage(identity: Identity, counter = 0): string {
  const field = (id: keyof Identity, label: string): string => `<dt>${label}</dt><dd id="${id}">${escapeHtml(identity[id] ?? "unknown")}</dd>`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; }
  dt { font-weight: bold; }
  dd { margin: 0; font-family: ui-monospace, monospace; }
  header { display: flex; justify-content: flex-end; }
</style>
</head>
<body>
<header><nav aria-label="Hypervisor"><a id="hv-account" href="/_hv/account">Your account</a></nav></header>
<main>
<h1>Sandbox</h1>
<dl>
${field("user", "User")}
${field("role", "Role")}
${field("generation", "Generation")}
${field("version", "Version")}
${field("slot", "Slot")}
</dl>
<h2>Data</h2>
<p>Counter kept in <code>/data</code>: <output id="data-counter" aria-live="polite">${counter}</output>
  <button id="counter-add" type="button">Add one</button></p>
<h2>Run a task</h2>
<form id="task-form">
  <label for="task-input">Text to transform</label>
  <input id="task-input" name="input" required autocomplete="off">
  <button id="task-run" type="submit">Run</button>
</form>
<p>Progress: <span id="task-progress" role="status" aria-live="polite">idle</span></p>
<p>Result: <output id="task-result" for="task-input" aria-live="polite"></output></p>
<h2>History</h2>
<ol id="task-history"></ol>
</main>
<script>
(() => {
  document.getElementById('counter-add').addEventListener('click', async () => {
    const res = await fetch('counter', { method: 'POST' });
    if (res.ok) document.getElementById('data-counter').textContent = String((await res.json()).count);
  });
})();
(() => {
  const form = document.getElementById('task-form');
  const input = document.getElementById('task-input');
  const progress = document.getElementById('task-progress');
  const result = document.getElementById('task-result');
  const history = document.getElementById('task-history');

  async function loadHistory() {
    const response = await fetch('api/tasks', { headers: { accept: 'application/json' } });
    if (!response.ok) throw new Error('history: HTTP ' + response.status);
    const { tasks } = await response.json();
    history.replaceChildren(...tasks.map((task) => {
      const item = document.createElement('li');
      item.textContent = task.input + ' \\u2192 ' + task.output + ' (version ' + task.version + ')';
      return item;
    }));
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const url = new URL('ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const id = Date.now().toString(36) + Math.random().toString(36).slice(2);
    const socket = new WebSocket(url);
    progress.textContent = 'connecting';
    result.textContent = '';
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({ type: 'task', id, input: input.value }));
    });
    socket.addEventListener('message', (message) => {
      const event = JSON.parse(message.data);
      if (event.type === 'progress') {
        progress.textContent = 'step ' + event.step + ' of ' + event.of;
      } else if (event.type === 'result') {
        progress.textContent = 'done';
        result.textContent = event.output;
        socket.close(1000);
        loadHistory().catch((error) => { progress.textContent = error.message; });
      } else if (event.type === 'error') {
        progress.textContent = 'error: ' + event.message;
        socket.close(1000);
      }
    });
    socket.addEventListener('close', (event) => {
      if (progress.textContent === 'connecting' || progress.textContent.startsWith('step')) {
        progress.textContent = 'connection closed (' + event.code + ')';
      }
    });
  });

  loadHistory().catch((error) => { progress.textContent = error.message; });
})();
</script>
</body>
</html>
`;
}
