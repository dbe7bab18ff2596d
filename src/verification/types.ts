export const METHODS = ['flash_call', 'voice', 'sms'] as const;
export type Method = (typeof METHODS)[number];

/**
 * Methods this build has delivery workers for. The API accepts these whatever
 * the role of the process: an `--role api` process hands jobs to the workers
 * of other processes.
 */
export const DELIVERABLE_METHODS: readonly Method[] = ['flash_call', 'voice', 'sms'];

export const STATUSES = ['sent', 'delivered', 'verified', 'expired', 'failed', 'canceled'] as const;
export type Status = (typeof STATUSES)[number];

/** The 201 body of POST /v1/verify, exactly as documented. */
export interface CreatedBody {
  request_id: string;
  phone_number: string;
  method: Method;
  status: 'sent';
  code_length: number;
  cost: { amount: number; currency: string };
  expires_at: string;
  /** Workflow requests only: the steps, echoed (workflow.ts). */
  workflow?: { method: Method; timeout_seconds?: number }[];
}

/** The body of GET /v1/verify/{id}: the documented fields plus the status history. */
export interface StatusBody {
  request_id: string;
  phone_number: string;
  method: Method;
  status: Status;
  cost: { amount: number; currency: string };
  created_at: string;
  verified_at: string | null;
  expires_at: string;
  /** Every status the request went through, oldest first. */
  status_history: { status: Status; at: string }[];
  /** Why delivery failed, when status is failed (e.g. busy, no_ringing, unreachable). */
  failure_reason?: string;
  /** Workflow requests only: the steps asked for, and one entry per step started (workflow.ts). */
  workflow?: { method: Method; timeout_seconds?: number }[];
  attempts?: AttemptBody[];
}

/** One step of a workflow as GET /v1/verify/{id} shows it. */
export interface AttemptBody {
  method: Method;
  status: string;
  cost: { amount: number; currency: string };
  started_at: string;
  ended_at: string | null;
  failure_reason?: string;
}

/** Documented timestamps carry no milliseconds: 2026-03-04T15:05:00Z. */
export function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/**
 * The UTC day whose usage counted the current attempt (a workflow's step n: `att<n>_started_at`) or send
 * (`last_send_at`, else `created_at`): the day a refund of it is taken out of.
 */
export function attemptDay(h: Record<string, string | undefined>): string {
  const startedAt = h.wf_step !== undefined ? h[`att${h.wf_step}_started_at`] : (h.last_send_at ?? h.created_at);
  return utcDay(Number(startedAt ?? Date.now()) || Date.now());
}
