// The demo WebSocket backend: greets each client with "example" and logs
// what it receives (the behaviour users start from).
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 3000);
const wss = new WebSocketServer({ host: process.env.HOST || '127.0.0.1', port });

wss.on('connection', (ws) => {
  ws.on('message', (data) => console.log('received: %s', data));
  ws.send('example');
});
wss.on('listening', () => console.log(`demo backend listening on ws://127.0.0.1:${port}`));
