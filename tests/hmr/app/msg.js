export const msg = 'version 1';
