import { AppError } from './app-error.js';

/** Why a listener could not be opened, in words an operator can act on. */
function reason(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'EADDRINUSE':
      return 'the address is already in use (another flashverify process, or another program, holds it)';
    case 'EACCES':
      return 'permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)';
    case 'EADDRNOTAVAIL':
      return 'this host has no such address';
    case 'ENOTFOUND':
      return 'the host name does not resolve to an address (give an IP address, or a name this host resolves)';
    case 'EAI_AGAIN':
      return 'the host name could not be resolved now (DNS did not answer)';
    default:
      return err.message;
  }
}

const LISTEN_CODES = new Set(['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'ENOTFOUND', 'EAI_AGAIN']);

/** A port or address the configuration names could not be listened on: which listener, where, why, and the setting. */
export class ListenError extends AppError {
  constructor(what: string, host: string, port: number, setting: string, cause: NodeJS.ErrnoException) {
    // dgram's bind fails with syscall "bind"; a TCP server's with "listen".
    // A host name that does not resolve fails in getaddrinfo, before any socket: no protocol to name.
    const proto = cause.syscall === 'getaddrinfo' ? '' : cause.syscall === 'bind' ? ' (udp)' : ' (tcp)';
    const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    super('listen_failed', `cannot listen for ${what} on ${address}${proto}: ${reason(cause)}. Set ${setting}`);
  }
}

/** Runs `open`; an address or permission error it throws becomes a ListenError naming the listener and its setting. */
export async function listening<T>(what: string, host: string, port: number, setting: string, open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e instanceof Error && e.code !== undefined && LISTEN_CODES.has(e.code)) throw new ListenError(what, host, port, setting, e);
    throw err;
  }
}
