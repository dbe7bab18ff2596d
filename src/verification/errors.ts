import { AppError } from '../errors/app-error.js';

/**
 * The HTTP error catalogue: exactly the codes of the FlashVerify v1 docs,
 * plus `invalid_request` (malformed JSON, wrong types, unknown fields, wrong
 * content type, oversized body), `service_unavailable` (Redis down) and
 * `verification_pending` (409, one live verification per number), which the
 * docs leave unnamed. Every error body is {"error", "message"}.
 */
export const ERROR_CATALOGUE = {
  invalid_phone: { status: 400, message: 'Phone number is not in valid E.164 format' },
  invalid_code: { status: 400, message: 'Incorrect code' },
  verification_expired: { status: 400, message: 'Code has expired or maximum 3 attempts reached' },
  invalid_request: { status: 400, message: 'The request is not valid' },
  unauthorized: { status: 401, message: 'Invalid or missing API key/secret' },
  insufficient_balance: { status: 402, message: 'Your balance is too low for this request' },
  account_pending: { status: 403, message: 'Account has not been approved yet' },
  account_suspended: { status: 403, message: 'Account has been suspended by admin' },
  not_found: { status: 404, message: 'Verification request ID not found' },
  // Extends the docs' catalogue (fraud controls): a live verification of this number exists; the body carries its request_id.
  verification_pending: { status: 409, message: 'A verification of this number is still pending' },
  rate_limited: { status: 429, message: 'Too many requests. Respect your rate limit.' },
  internal_error: { status: 500, message: 'Something went wrong on our end. Contact support if persistent.' },
  service_unavailable: { status: 503, message: 'The service is temporarily unavailable; retry shortly' },
} as const;

export type ApiErrorCode = keyof typeof ERROR_CATALOGUE;

export class ApiError extends AppError {
  readonly status: number;
  /** Response headers that go with this error, e.g. Retry-After of a 429. */
  readonly headers: Record<string, string | number> = {};
  constructor(
    override readonly code: ApiErrorCode,
    message?: string,
    /** Extra documented fields of the body, e.g. attempts_remaining. */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(code, message ?? ERROR_CATALOGUE[code].message);
    this.status = ERROR_CATALOGUE[code].status;
  }

  toBody(): Record<string, unknown> {
    return { error: this.code, message: this.message, ...this.extra };
  }
}
