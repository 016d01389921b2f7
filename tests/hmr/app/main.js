import { msg } from './msg.js';

document.querySelector('#msg').textContent = msg;

// Accepting the update in place is what makes it HMR and not a reload.
if (import.meta.hot) {
  import.meta.hot.accept('./msg.js', (mod) => {
    document.querySelector('#msg').textContent = mod.msg;
  });
}
