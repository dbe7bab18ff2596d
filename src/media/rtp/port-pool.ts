import { createSocket, type Socket } from 'node:dgram';
import { MediaError } from '../sdp.js';

/**
 * Hands out RTP ports from [min, max]: even ports only (RFC 3550 11: RTP on
 * an even port, RTCP on the next odd one), round-robin so a port just freed
 * is not reused at once (late packets of the previous call). A port taken by
 * another process is skipped.
 */
export class RtpPortPool {
  private readonly inUse = new Set<number>();
  private cursor: number;
  private readonly first: number;
  private readonly slots: number;

  constructor(
    private readonly host: string,
    min: number,
    max: number,
  ) {
    this.first = min % 2 === 0 ? min : min + 1;
    this.slots = Math.max(0, Math.floor((max - this.first) / 2) + 1);
    this.cursor = 0;
  }

  get capacity(): number {
    return this.slots;
  }

  get used(): number {
    return this.inUse.size;
  }

  /** Binds a UDP socket on a free port of the range. Throws MediaError when none is free. */
  async bind(): Promise<{ socket: Socket; port: number; release(): void }> {
    for (let tried = 0; tried < this.slots; tried++) {
      const port = this.first + 2 * ((this.cursor + tried) % this.slots);
      if (this.inUse.has(port)) continue;
      this.inUse.add(port);
      const socket = createSocket(this.host.includes(':') ? 'udp6' : 'udp4');
      const ok = await new Promise<boolean>((resolve) => {
        const onError = (): void => resolve(false);
        socket.once('error', onError);
        socket.bind(port, this.host, () => {
          socket.off('error', onError);
          resolve(true);
        });
      });
      if (!ok) {
        this.inUse.delete(port);
        socket.close();
        continue;
      }
      this.cursor = (this.cursor + tried + 1) % this.slots;
      let released = false;
      return {
        socket,
        port,
        release: () => {
          if (released) return;
          released = true;
          this.inUse.delete(port);
        },
      };
    }
    throw new MediaError(`no free RTP port in the configured range (${this.slots} ports, ${this.inUse.size} in use)`);
  }
}
