// The dev server listens on VITE_PORT; the browser only ever talks to
// wsplice on WSPLICE_PORT, for the page and for the HMR socket alike.
export default {
  root: import.meta.dirname,
  logLevel: 'info',
  clearScreen: false,
  server: {
    host: '127.0.0.1',
    port: Number(process.env.VITE_PORT),
    strictPort: true,
    hmr: { clientPort: Number(process.env.WSPLICE_PORT) },
  },
};
