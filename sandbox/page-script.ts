/**
 * The page's own script, inline (the sandbox sets no CSP of its own). Plain browser JavaScript
 * without a build step; relative URLs only, so it works under the `/dev/` prefix too.
 */
export const PAGE_SCRIPT = `
(() => {
  const $ = (id) => document.getElementById(id);

  $('counter-add').addEventListener('click', async () => {
    const button = $('counter-add');
    button.disabled = true;
    try {
      const res = await fetch('counter', { method: 'POST' });
      if (res.ok) $('data-counter').textContent = String((await res.json()).count);
    } finally {
      button.disabled = false;
    }
  });

  const progress = $('task-progress');
  async function loadHistory() {
    const response = await fetch('api/tasks', { headers: { accept: 'application/json' } });
    if (!response.ok) throw new Error('history: HTTP ' + response.status);
    const { tasks } = await response.json();
    $('task-count').textContent = String(tasks.length);
    $('task-history').replaceChildren(...tasks.slice(-10).reverse().map((task) => {
      const item = document.createElement('li');
      item.textContent = task.input + ' → ' + task.output + ' (version ' + task.version + ')';
      return item;
    }));
  }

  $('task-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const url = new URL('ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const id = Date.now().toString(36) + Math.random().toString(36).slice(2);
    const socket = new WebSocket(url);
    progress.textContent = 'connecting';
    $('task-result').textContent = '';
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({ type: 'task', id, input: $('task-input').value }));
    });
    socket.addEventListener('message', (message) => {
      const event = JSON.parse(message.data);
      if (event.type === 'progress') {
        progress.textContent = 'step ' + event.step + ' of ' + event.of;
      } else if (event.type === 'result') {
        progress.textContent = 'done';
        $('task-result').textContent = event.output;
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

  // Outside services: absent when the sandbox has no gateway (the page then says so already).
  const egressForm = $('egress-form');
  if (!egressForm) return;
  const status = $('egress-status');
  const say = (text, isError) => {
    status.textContent = text;
    status.classList.toggle('error', Boolean(isError));
  };
  fetch('api/egress', { headers: { accept: 'application/json' } })
    .then((res) => res.json())
    .then((egress) => {
      if (!egress.routes) return say(egress.message, true);
      if (egress.routes.length === 0) {
        return say('The operator has configured no egress routes, so there is no outside service to call yet.');
      }
      $('egress-route').replaceChildren(...egress.routes.map((name) => new Option(name, name)));
      say(egress.routes.length === 1 ? 'One route: ' + egress.routes[0] + '.' : egress.routes.length + ' routes: ' + egress.routes.join(', ') + '.');
      egressForm.hidden = false;
    })
    .catch((error) => say('Cannot ask this sandbox about its routes: ' + error.message, true));

  egressForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = $('egress-call');
    const route = $('egress-route').value;
    button.disabled = true;
    say('Calling ' + route + '…');
    try {
      const res = await fetch('api/egress', {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ route, path: $('egress-path').value }),
      });
      const answer = await res.json();
      if (!res.ok) return say(answer.message || 'The call failed (HTTP ' + res.status + ').', true);
      const gatewayError = answer.error && answer.error.message;
      say(route + ' answered HTTP ' + answer.status + (gatewayError ? ': ' + gatewayError : '.'), answer.status >= 400);
      $('egress-answer-status').textContent = 'HTTP ' + answer.status + (answer.contentType ? ' · ' + answer.contentType : '') + (answer.truncated ? ' · first 4 KiB' : '');
      $('egress-answer-body').textContent = answer.body;
      $('egress-answer').hidden = false;
    } catch (error) {
      say('The call failed: ' + error.message, true);
    } finally {
      button.disabled = false;
    }
  });
})();
`;
