import type { Logger } from 'pino';

/**
 * Runs `pass` every `intervalMs` (measured from the end of the previous pass,
 * so passes never overlap) until stopped. A failed pass is logged and the next
 * one runs as usual. Used by the sweepers that every worker process runs
 * against shared Redis state (expiry, enqueue reconciliation).
 */
export class PeriodicPass {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private current: Promise<void> | undefined;

  constructor(
    private readonly pass: () => Promise<unknown>,
    private readonly intervalMs: number,
    private readonly logger: Logger,
    /** Logged at warn with the error when a pass fails. */
    private readonly failureMessage: string,
  ) {}

  start(): void {
    this.running = true;
    this.schedule();
  }

  /** Stops scheduling and waits for a pass in progress. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    await this.current?.catch(() => undefined);
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      this.current = this.pass()
        .then(() => undefined)
        .catch((err: Error) => this.logger.warn({ err: err.message }, this.failureMessage))
        .finally(() => this.schedule());
    }, this.intervalMs);
  }
}
