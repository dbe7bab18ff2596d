import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { WebhookSlots, type ReleaseSlot } from './webhook-slots.js';

export interface WebhookAgentsConfig {
  /** An idle pooled connection is closed after this (ms); 0: no keep-alive, one connection per delivery. */
  keepAliveMs: number;
  /** Connections per origin (scheme, host, port), busy and idle together; more deliveries wait for one. Only with keep-alive. */
  maxSocketsPerHost: number;
}

/** What a delivery admitted to its origin sends through, and the slot it gives back when it has ended. */
export interface WebhookConnection {
  /** The pool of the URL's scheme; false: a connection of its own, closed after it (keep-alive off). */
  agent: HttpAgent | false;
  /** Once the delivery has ended in any way (its answer read, an error, its deadline); only the first call counts. */
  release: ReleaseSlot;
}

/**
 * The connection pools of webhook deliveries: one http and one https Agent
 * (none when `keepAliveMs` is 0: each delivery then has a connection of its
 * own, as before pooling, and no per-origin limit).
 *
 * Node's Agent pools sockets by host name and port (`Agent#getName`; the https
 * one adds the TLS options), and the two schemes have an Agent each, so a
 * socket serves only the origin it was opened for: an account whose URL
 * changes to another host gets a new connection, checked by `guardedLookup`
 * like every new connection. A pooled socket stays connected to the address
 * checked when it was opened; DNS rebinding cannot move it.
 *
 * At most `maxSocketsPerHost` deliveries per origin are let into the Agent at
 * a time (webhook-slots.ts); the others wait for a slot, in order, and leave
 * the queue when their deadline fires. The Agent has no socket limit of its
 * own, so it never queues a request: one queued there cannot be taken out, and
 * the Agent could later open a connection for it, unused. Each admitted
 * delivery takes a free socket or, when none is, opens one: the origin has at
 * most `maxSocketsPerHost` connections, busy and idle.
 *
 * Idle sockets are closed after `keepAliveMs`, before common servers close
 * them (Node's server default is 5 s, nginx 75 s): a receiver closing an idle
 * connection just as we reuse it costs a retry on a new connection
 * (webhook-sender.ts), and the shorter our idle time, the rarer that is. A
 * receiver's `Keep-Alive: timeout=N` hint shortens it further (Node keeps a
 * socket at most N - 1 s, none when that is 0).
 */
export class WebhookAgents {
  private readonly pools: { http: HttpAgent; https: HttpsAgent; slots: WebhookSlots } | undefined;

  constructor(config: WebhookAgentsConfig) {
    // keepAliveMs 0: no Agent at all. An Agent without keep-alive but with a socket limit still hands a finished
    // socket to a request waiting for one, and says "Connection: keep-alive" to let it.
    if (config.keepAliveMs === 0) return;
    // `timeout` is the socket's idle timeout: the Agent destroys a free socket when it fires (an active one only
    // emits 'timeout', which nothing here listens to: the delivery's deadline is its signal).
    // No maxSockets (Node's default: Infinity): the slots are the limit, and the Agent must never queue.
    const options = { keepAlive: true, timeout: config.keepAliveMs };
    this.pools = { http: new HttpAgent(options), https: new HttpsAgent(options), slots: new WebhookSlots(config.maxSocketsPerHost) };
  }

  /**
   * Waits for a slot of the URL's origin (scheme, host name, port) and gives the Agent to send through; rejects
   * with the signal's reason when it aborts first, the delivery no longer waiting. Keep-alive off: at once, no
   * Agent and no limit.
   */
  async connection(url: URL, signal: AbortSignal): Promise<WebhookConnection> {
    if (!this.pools) return { agent: false, release: () => undefined };
    const release = await this.pools.slots.acquire(url.origin, signal);
    return { agent: url.protocol === 'https:' ? this.pools.https : this.pools.http, release };
  }

  /** Deliveries holding a connection slot and waiting for one, over every origin (zeros with keep-alive off: no limit, no wait). */
  usage(): { held: number; waiting: number } {
    return this.pools?.slots.totals() ?? { held: 0, waiting: 0 };
  }

  /** Slots held and deliveries waiting for the URL's origin, for the message of a delivery that waited in vain. */
  originUsage(url: URL): { held: number; waiting: number } {
    return this.pools?.slots.stats(url.origin) ?? { held: 0, waiting: 0 };
  }

  /**
   * Closes every pooled socket, idle or busy (a delivery still in flight fails and is retried by BullMQ), and fails
   * every delivery still waiting for a slot (SlotsClosedError: retried too, not a failure of the receiver).
   */
  destroy(): void {
    this.pools?.slots.close();
    this.pools?.http.destroy();
    this.pools?.https.destroy();
  }
}
