// A node `ws` client that checks an echo server through the proxy.
//   node check_client.js URL bulk    4 MiB of random binary, sha256 compared
//   node check_client.js URL frames  10 000 small messages, order checked
// Exits 0 and prints "ok ..." when everything came back intact.
const crypto = require('crypto');
const WebSocket = require('ws');

const [url, mode] = process.argv.slice(2);
const ws = new WebSocket(url, { maxPayload: 64 << 20 });
const fail = (why) => { console.error('FAIL ' + why); process.exit(1); };
setTimeout(() => fail('timeout'), 60000);
ws.on('error', (e) => fail(e.message));

ws.on('open', () => {
  if (mode === 'bulk') {
    const payload = crypto.randomBytes(4 << 20);
    const want = crypto.createHash('sha256').update(payload).digest('hex');
    ws.once('message', (data) => {
      const got = crypto.createHash('sha256').update(data).digest('hex');
      if (got !== want) fail(`sha256 ${got} != ${want}`);
      console.log('ok bulk ' + got);
      ws.close();
    });
    ws.send(payload);
  } else {
    const n = 10000;
    let next = 0;
    ws.on('message', (data) => {
      if (String(data) !== `frame-${next}`) fail(`got ${data} expected frame-${next}`);
      if (++next === n) { console.log('ok frames ' + n); ws.close(); }
    });
    for (let i = 0; i < n; i++) ws.send(`frame-${i}`);
  }
});
ws.on('close', () => process.exit(0));
