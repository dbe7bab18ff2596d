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
 * When an attempt was charged, as the script that charged it wrote it: a workflow's step n at `att<n>_started_at`
 * (createVerification-9, advanceWorkflow-8), a request's latest send at `last_send_at` (resendVerification-5), else
 * at `created_at`. Each of those scripts counts the charge in the usage and in the conversion `sent` of that same
 * instant's UTC day, so this is the one record of the day a refund of the attempt must be taken out of.
 * `step` defaults to the current one (`wf_step`); `h` needs only the fields chargeFields() names.
 */
export function chargedAt(h: Record<string, string | undefined>, step: string | number | undefined = h.wf_step): string | undefined {
  return step !== undefined ? h[`att${step}_started_at`] : (h.last_send_at ?? h.created_at);
}

/** The record fields chargedAt() reads for workflow step `step` (undefined: a request without steps). */
export function chargeFields(step: string | number | undefined): string[] {
  return step !== undefined ? [`att${step}_started_at`] : ['last_send_at', 'created_at'];
}

/** The UTC day whose usage and conversion counters the attempt was charged in (chargedAt), the day its refund leaves. */
export function chargeDay(h: Record<string, string | undefined>, step: string | number | undefined = h.wf_step): string {
  return utcDay(Number(chargedAt(h, step)) || Date.now());
}

/**
 * n of a job id `<request_id>-<kind><n>` (n from 1, no leading zero): a resend's send (`r`, resend.ts resendJobId) or a
 * workflow step (`s`, workflow.ts stepJobId); undefined for any other id.
 */
export function jobOrdinal(requestId: string, jobId: string | undefined, kind: 'r' | 's'): number | undefined {
  const prefix = `${requestId}-${kind}`;
  if (!jobId?.startsWith(prefix)) return undefined;
  const n = jobId.slice(prefix.length);
  return /^[1-9]\d{0,8}$/.test(n) ? Number(n) : undefined;
}
