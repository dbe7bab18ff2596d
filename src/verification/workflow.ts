import { fromMicro } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import { ApiError } from './errors.js';
import { METHODS, isoSeconds, jobOrdinal, type AttemptBody, type Method } from './types.js';

/**
 * Fallback workflows (issue 6): one request, several delivery steps tried in
 * order (e.g. flash call, then voice, then SMS). Each step starts when the
 * previous one failed or its `timeout_seconds` passed without `verified`;
 * each has its own code (sealed per step) and its own cost, debited when it
 * starts.
 *
 * Where the state lives (the verification hash):
 *   wf        JSON of the steps [{method, timeout_seconds?, code_length}]
 *   wf_step   index of the current step; wf_steps: how many there are
 *   att<n>_method|status|cost|started_at|ended_at|reason|delivered_at|refunded
 *             one attempt per started step; status sent → delivered →
 *             failed | timed_out | canceled (verified/expired are shown from the request)
 *   method, code_mac, code_enc, code_length, cost (sum of the attempts):
 *             those of the current step, so checks and delivery jobs work as for one method.
 *
 * How a step advances: the events stream is the only trigger. A delivery
 * event carries `step`; a failed step, or a `verification.step_timeout` event
 * written by the step's delayed timer job, is read by the workflow advancer's
 * consumer group (src/events/workflow-advancer.ts), which runs
 * advanceWorkflow-8.lua: a compare-and-set on `wf_step`. The stream entry is
 * acknowledged only after the next step's jobs are queued under fixed ids.
 */

export interface WorkflowStep {
  method: Method;
  /** Seconds the step gets before the next one starts; the last step may have none. */
  timeout_seconds?: number;
  code_length: number;
}

/** Code length of a step: flash calls always 4 (the last digits of the caller ID). */
export function stepCodeLength(method: Method, requested: number): number {
  return method === 'flash_call' ? 4 : requested;
}

/**
 * The workflow of a create request, or undefined when it asks for one method.
 * `method` and `workflow` are mutually exclusive; `"method": "auto"` is
 * `verification.defaultWorkflow`. Steps: 1-5, known methods, `timeout_seconds`
 * from `verification.minStepTimeoutSeconds` to the expiry (required on every
 * step but the last), never the same method twice in a row (a delivery job
 * left over from step n, when it could not be removed, would otherwise claim
 * step n+1 as its own: jobs carry only the request id).
 */
export function parseWorkflow(
  input: { method?: unknown; workflow?: unknown; code_length?: unknown },
  config: Readonly<Config>,
  expirySeconds: number,
  available: ReadonlySet<Method>,
): WorkflowStep[] | undefined {
  let raw: unknown = input.workflow;
  if (raw !== undefined && input.method !== undefined) {
    throw new ApiError('invalid_request', 'method and workflow are mutually exclusive');
  }
  if (raw === undefined) {
    if (input.method !== 'auto') return undefined;
    raw = config.verification.defaultWorkflow;
  }
  if (!Array.isArray(raw) || raw.length < 1 || raw.length > 5) {
    throw new ApiError('invalid_request', 'workflow must be an array of 1 to 5 steps');
  }
  let codeLength = 4;
  if (input.code_length !== undefined) {
    if (typeof input.code_length !== 'number' || !Number.isInteger(input.code_length) || input.code_length < 4 || input.code_length > 6) {
      throw new ApiError('invalid_request', 'code_length must be an integer between 4 and 6');
    }
    codeLength = input.code_length;
  }
  const min = config.verification.minStepTimeoutSeconds;
  return raw.map((step: unknown, i): WorkflowStep => {
    const at = `workflow[${i}]`;
    if (typeof step !== 'object' || step === null || Array.isArray(step)) throw new ApiError('invalid_request', `${at} must be an object`);
    const s = step as Record<string, unknown>;
    const unknown = Object.keys(s).filter((k) => k !== 'method' && k !== 'timeout_seconds');
    if (unknown.length) throw new ApiError('invalid_request', `${at}: unknown field(s): ${unknown.join(', ')}`);
    if (typeof s.method !== 'string' || !(METHODS as readonly string[]).includes(s.method)) {
      throw new ApiError('invalid_request', `${at}.method must be one of ${METHODS.join(', ')}`);
    }
    const method = s.method as Method;
    if (!available.has(method)) throw new ApiError('invalid_request', `${at}: method "${method}" is not available on this server`);
    const prev = i > 0 ? (raw[i - 1] as Record<string, unknown> | null)?.method : undefined;
    if (prev === method) throw new ApiError('invalid_request', `${at}: the same method as the step before it ("${method}"); a step must change the method`);
    const last = i === raw.length - 1;
    const t = s.timeout_seconds;
    if (t === undefined) {
      if (!last) throw new ApiError('invalid_request', `${at}.timeout_seconds is required (every step but the last)`);
    } else if (typeof t !== 'number' || !Number.isInteger(t) || t < min || t > expirySeconds) {
      throw new ApiError('invalid_request', `${at}.timeout_seconds must be an integer from ${min} to ${expirySeconds} (the expiry)`);
    }
    return { method, ...(t !== undefined ? { timeout_seconds: t as number } : {}), code_length: stepCodeLength(method, codeLength) };
  });
}

/**
 * Drops, in order, every step whose method is in `drop` (a flash call to a
 * number that is not a mobile, fraud-rules.ts), then every step that would
 * repeat the method of the step before it (parseWorkflow's rule); a kept step
 * keeps its timeout. Returns the steps left (maybe none).
 */
export function withoutMethods(steps: readonly WorkflowStep[], drop: ReadonlySet<Method>): WorkflowStep[] {
  const out: WorkflowStep[] = [];
  for (const s of steps) {
    if (drop.has(s.method) || out[out.length - 1]?.method === s.method) continue;
    out.push(s);
  }
  return out;
}

/** The record fields that make a request a workflow at step 0 (written by createVerification-9 with the record). */
export function initialFields(steps: readonly WorkflowStep[], cost: number, now: number): Record<string, string> {
  return {
    wf: JSON.stringify(steps),
    wf_step: '0',
    wf_steps: String(steps.length),
    att0_method: steps[0]!.method,
    att0_status: 'sent',
    att0_cost: String(cost),
    att0_started_at: String(now),
  };
}

export function readSteps(h: Record<string, string | undefined>): WorkflowStep[] | undefined {
  if (!h.wf) return undefined;
  try {
    return JSON.parse(h.wf) as WorkflowStep[];
  } catch {
    return undefined;
  }
}

/** The echo of the steps in API bodies: method and timeout_seconds. */
export function stepsBody(steps: readonly WorkflowStep[]): { method: Method; timeout_seconds?: number }[] {
  return steps.map((s) => ({ method: s.method, ...(s.timeout_seconds !== undefined ? { timeout_seconds: s.timeout_seconds } : {}) }));
}

/** Delivery job id of step n: step 0 keeps the request id (as the enqueue reconciler expects); BullMQ refuses ':' in ids. */
export function stepJobId(requestId: string, step: number): string {
  return step === 0 ? requestId : `${requestId}-s${step}`;
}

/**
 * The workflow step a delivery job was queued for, read back from its job id (the inverse of stepJobId): 0 for the
 * request id itself, n for `<request_id>-s<n>`. Undefined for any other id (a resend's `-r<n>`, none known): such a
 * job is not bound to a step.
 */
export function stepOfJob(requestId: string, jobId: string | undefined): number | undefined {
  return jobId === requestId ? 0 : jobOrdinal(requestId, jobId, 's');
}

export function timeoutJobId(requestId: string, step: number): string {
  return `${requestId}-t${step}`;
}

/** Delayed jobs that end a step whose time is up (src/engine/step-timer.ts). */
export interface StepTimer {
  /** Idempotent: one job per (request, step), id `<request_id>-t<n>`. */
  schedule(requestId: string, step: number, delayMs: number): Promise<void>;
}

/**
 * The attempts of a workflow request for GET /v1/verify/{id}. The current
 * attempt shows the request's final status (verified, expired) once it has one.
 */
export function attemptsBody(h: Record<string, string | undefined>, currency: string): AttemptBody[] {
  const current = Number(h.wf_step ?? 0);
  const out: AttemptBody[] = [];
  for (let n = 0; n <= current; n++) {
    const a = (f: string): string | undefined => h[`att${n}_${f}`];
    const method = a('method');
    if (!method) continue;
    let status = a('status') ?? 'sent';
    let endedAt = a('ended_at');
    if (n === current && (status === 'sent' || status === 'delivered')) {
      if (h.status === 'verified') {
        status = 'verified';
        endedAt = h.verified_at;
      } else if (h.status === 'expired') {
        status = 'expired';
        endedAt = h.at_expired ?? h.expires_at;
      }
    }
    const reason = a('reason');
    out.push({
      method: method as Method,
      status,
      cost: { amount: fromMicro(Number(a('cost') ?? 0)), currency },
      started_at: isoSeconds(Number(a('started_at'))),
      ended_at: endedAt ? isoSeconds(Number(endedAt)) : null,
      ...(reason ? { failure_reason: reason } : {}),
    });
  }
  return out;
}
