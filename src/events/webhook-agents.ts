import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';

export interface WebhookAgentsConfig {
  /** An idle pooled connection is closed after this (ms); 0: no keep-alive, one connection per delivery. */
  keepAliveMs: number;
  /** Connections per origin (scheme, host, port), busy and idle together; more deliveries wait for one. Only with keep-alive. */
  maxSocketsPerHost: number;
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
 * Idle sockets are closed after `keepAliveMs`, before common servers close
 * them (Node's server default is 5 s, nginx 75 s): a receiver closing an idle
 * connection just as we reuse it costs a retry on a new connection
 * (webhook-sender.ts), and the shorter our idle time, the rarer that is. A
 * receiver's `Keep-Alive: timeout=N` hint shortens it further (Node keeps a
 * socket at most N - 1 s, none when that is 0).
 */
export class WebhookAgents {
  private readonly pools: { http: HttpAgent; https: HttpsAgent } | undefined;

  constructor(config: WebhookAgentsConfig) {
    // keepAliveMs 0: no Agent at all. An Agent without keep-alive but with a socket limit still hands a finished
    // socket to a request waiting for one, and says "Connection: keep-alive" to let it.
    if (config.keepAliveMs === 0) return;
    // `timeout` is the socket's idle timeout: the Agent destroys a free socket when it fires (an active one only
    // emits 'timeout', which nothing here listens to: the delivery's deadline is its signal).
    const options = { keepAlive: true, timeout: config.keepAliveMs, maxSockets: config.maxSocketsPerHost };
    this.pools = { http: new HttpAgent(options), https: new HttpsAgent(options) };
  }

  /** The Agent of the URL's scheme; false (a connection of its own, closed after it) when keep-alive is off. */
  for(url: URL): HttpAgent | false {
    if (!this.pools) return false;
    return url.protocol === 'https:' ? this.pools.https : this.pools.http;
  }

  /** Closes every pooled socket, idle or busy (a delivery still in flight fails and is retried by BullMQ). */
  destroy(): void {
    this.pools?.http.destroy();
    this.pools?.https.destroy();
  }
}
