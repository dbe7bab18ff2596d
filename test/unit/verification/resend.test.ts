import { describe, expect, it } from 'vitest';
import { resendJobId, sendOfJob } from '../../../src/verification/resend.js';
import { stepJobId, stepOfJob, timeoutJobId } from '../../../src/verification/workflow.js';

const ID = '0b6f3c1e-7a52-4f3e-9d0a-2c8e1f4b5a69';

describe('the send a delivery job is for, read from its job id', () => {
  it('is 1 for the request id (the create, the enqueue reconciler), n for a resend\'s job id', () => {
    expect(sendOfJob(ID, ID)).toBe(1);
    for (const n of [2, 3, 5, 12]) expect(sendOfJob(ID, resendJobId(ID, n))).toBe(n);
  });

  it('is unknown (not checked) for any other job id: a workflow step, a timer, another request, none', () => {
    for (const jobId of [stepJobId(ID, 1), timeoutJobId(ID, 0), '42', `${ID}-r`, `${ID}-r0`, `${ID}-r2x`, `${ID}-r02`, resendJobId(`${ID.slice(0, -1)}0`, 2), undefined]) {
      expect([jobId, sendOfJob(ID, jobId)]).toEqual([jobId, undefined]);
    }
  });
});

describe('the workflow step a delivery job is for, read from its job id', () => {
  it('is 0 for the request id (step 0), n for a step\'s job id', () => {
    expect(stepOfJob(ID, ID)).toBe(0);
    for (const n of [1, 2, 9, 10]) expect(stepOfJob(ID, stepJobId(ID, n))).toBe(n);
  });

  it('is unknown (not checked) for any other job id: a resend, a timer, another request, none', () => {
    for (const jobId of [resendJobId(ID, 2), timeoutJobId(ID, 1), `${ID}-s`, `${ID}-s0`, `${ID}-s01`, `${ID}-s1x`, stepJobId(`${ID.slice(0, -1)}0`, 1), undefined]) {
      expect([jobId, stepOfJob(ID, jobId)]).toEqual([jobId, undefined]);
    }
  });
});
