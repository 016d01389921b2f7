// A one-shot node `ws` client: connects, prints the first message, sends
// argv[3] (if any), and closes.
const WebSocket = require('ws');

const ws = new WebSocket(process.argv[2]);
const timer = setTimeout(() => { console.error('timeout'); process.exit(1); }, 5000);
ws.on('message', (data) => {
  console.log(String(data));
  if (process.argv[3]) ws.send(process.argv[3]);
  ws.close();
});
ws.on('close', () => { clearTimeout(timer); process.exit(0); });
ws.on('error', (e) => { console.error('error: ' + e.message); process.exit(1); });
