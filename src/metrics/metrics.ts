import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** What the concurrent-calls gauge reads at scrape time (the embedded originator has it). */
export interface ActiveCallsSource {
  readonly activeCalls: number;
}

/** What a queue-depth gauge reads at scrape time (a BullMQ Queue has it). */
export interface JobCountsSource {
  getJobCounts(...types: ('waiting' | 'active' | 'delayed')[]): Promise<Record<string, number>>;
}

/** Job states the queue-depth gauge reports; completed/failed are history, not depth. */
const DEPTH_STATES = ['waiting', 'active', 'delayed'] as const;

/**
 * The engine's Prometheus metrics, on a registry of its own (never the
 * prom-client global one, so two engines in one process, as in tests, do not
 * collide). One instance per process, created in main.ts and handed down
 * through constructors. Label values are bounded sets (trunk names, range
 * prefixes and outcomes from config and code), never request data.
 *
 * CPS is not a metric of its own: `rate(flashverify_calls_started_total[1m])`.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly callsStarted: Counter<'method' | 'trunk'>;
  private readonly calls: Counter<'method' | 'trunk' | 'outcome'>;
  private readonly pdd: Histogram<'trunk'>;
  private readonly jobLatencyHist: Histogram<'queue'>;
  private readonly webhookFailures: Counter<'final'>;
  private readonly rangeSentCounter: Counter<'range'>;
  private readonly rangeVerifiedCounter: Counter<'range'>;
  private readonly callSources: ActiveCallsSource[] = [];
  private readonly queues = new Map<string, JobCountsSource>();

  constructor(options: { defaultMetrics?: boolean } = {}) {
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.callsStarted = new Counter({
      name: 'flashverify_calls_started_total',
      help: 'Calls whose INVITE was sent, by method and trunk',
      labelNames: ['method', 'trunk'],
      registers,
    });
    this.calls = new Counter({
      name: 'flashverify_calls_total',
      help: 'Finished calls by method, trunk and outcome (cancelled, answered, busy, no_ringing, timeout ...)',
      labelNames: ['method', 'trunk', 'outcome'],
      registers,
    });
    this.pdd = new Histogram({
      name: 'flashverify_post_dial_delay_seconds',
      help: 'Post-dial delay: INVITE sent to first ringing 18x, by trunk',
      labelNames: ['trunk'],
      buckets: [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10],
      registers,
    });
    this.jobLatencyHist = new Histogram({
      name: 'flashverify_job_latency_seconds',
      help: 'Job created to processing start, by queue',
      labelNames: ['queue'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.webhookFailures = new Counter({
      name: 'flashverify_webhook_failures_total',
      help: 'Failed webhook delivery attempts; final="true" when the event was given up',
      labelNames: ['final'],
      registers,
    });
    this.rangeSentCounter = new Counter({
      name: 'flashverify_range_sent_total',
      help: 'Flash calls delivered (rang or answered), by DID range prefix of the CLI',
      labelNames: ['range'],
      registers,
    });
    this.rangeVerifiedCounter = new Counter({
      name: 'flashverify_range_verified_total',
      help: 'Flash-call verifications verified, by DID range prefix of the CLI',
      labelNames: ['range'],
      registers,
    });
    const callSources = this.callSources;
    new Gauge({
      name: 'flashverify_active_calls',
      help: 'Calls known to the SIP stack of this process (in progress or lingering for retransmissions)',
      registers,
      collect() {
        this.set(callSources.reduce((n, s) => n + s.activeCalls, 0));
      },
    });
    const queues = this.queues;
    new Gauge({
      name: 'flashverify_queue_jobs',
      help: 'Jobs in a BullMQ queue by state (waiting, active, delayed), read at scrape time',
      labelNames: ['queue', 'state'],
      registers,
      async collect() {
        // A scrape must not fail because Redis is slow or down: the gauge keeps its last values.
        await Promise.all(
          [...queues].map(async ([name, q]) => {
            const counts = await q.getJobCounts(...DEPTH_STATES).catch(() => undefined);
            if (!counts) return;
            for (const state of DEPTH_STATES) this.set({ queue: name, state }, counts[state] ?? 0);
          }),
        );
      },
    });
  }

  /** An INVITE is about to leave. */
  callStarted(method: string, trunk: string): void {
    this.callsStarted.inc({ method, trunk });
  }

  /** A call finished with `outcome`; `postDialDelayMs` when a ringing 18x arrived. */
  callEnded(method: string, trunk: string, outcome: string, postDialDelayMs?: number): void {
    this.calls.inc({ method, trunk, outcome });
    if (postDialDelayMs !== undefined) this.pdd.observe({ trunk }, postDialDelayMs / 1000);
  }

  /** A job moved to processing; `createdAt`/`startedAt` are epoch ms (BullMQ job.timestamp / processedOn). */
  jobStarted(queue: string, createdAt: number, startedAt: number = Date.now()): void {
    this.jobLatencyHist.observe({ queue }, Math.max(0, startedAt - createdAt) / 1000);
  }

  webhookFailed(final: boolean): void {
    this.webhookFailures.inc({ final: final ? 'true' : 'false' });
  }

  rangeSent(range: string): void {
    this.rangeSentCounter.inc({ range });
  }

  rangeVerified(range: string): void {
    this.rangeVerifiedCounter.inc({ range });
  }

  /** Report this source's activeCalls in `flashverify_active_calls` (summed over sources). */
  watchActiveCalls(source: ActiveCallsSource): void {
    this.callSources.push(source);
  }

  /** Report this queue's depth in `flashverify_queue_jobs{queue}` (one Redis round trip per scrape). */
  watchQueue(name: string, queue: JobCountsSource): void {
    this.queues.set(name, queue);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}
