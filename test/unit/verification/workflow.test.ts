import { describe, expect, it } from 'vitest';
import { configSchema } from '../../../src/config/schema.js';
import { loadConfig } from '../../../src/config/load.js';
import { ApiError } from '../../../src/verification/errors.js';
import { DELIVERABLE_METHODS } from '../../../src/verification/types.js';
import { parseWorkflow, withoutMethods, type WorkflowStep } from '../../../src/verification/workflow.js';

const config = loadConfig({ env: {}, overrides: { verification: { minStepTimeoutSeconds: 5 } } });
const all = new Set(DELIVERABLE_METHODS);

describe('workflow steps', () => {
  it('refuses two consecutive steps with the same method (a leftover job of one would claim the next)', () => {
    const parse = (workflow: unknown) => () => parseWorkflow({ workflow }, config, 300, all);
    expect(parse([{ method: 'sms', timeout_seconds: 10 }, { method: 'sms' }])).toThrow(/workflow\[1\]: the same method as the step before it/);
    expect(parse([{ method: 'sms', timeout_seconds: 10 }, { method: 'sms' }])).toThrow(ApiError);
    expect(parse([{ method: 'sms', timeout_seconds: 10 }, { method: 'voice', timeout_seconds: 10 }, { method: 'sms' }])()).toHaveLength(3);
  });

  it('refuses such a default workflow at boot', () => {
    const bad = configSchema.shape.verification.safeParse({
      defaultWorkflow: [{ method: 'voice', timeout_seconds: 10 }, { method: 'voice' }],
    });
    expect(bad.success).toBe(false);
    expect(JSON.stringify(bad.error?.issues)).toMatch(/same method/);
  });

  it('leaves out steps by method, then the repeats that creates; kept steps keep their timeouts', () => {
    const steps: WorkflowStep[] = [
      { method: 'sms', timeout_seconds: 30, code_length: 6 },
      { method: 'flash_call', timeout_seconds: 20, code_length: 4 },
      { method: 'sms', timeout_seconds: 40, code_length: 6 },
      { method: 'voice', code_length: 6 },
    ];
    expect(withoutMethods(steps, new Set(['flash_call']))).toEqual([
      { method: 'sms', timeout_seconds: 30, code_length: 6 },
      { method: 'voice', code_length: 6 },
    ]);
    expect(withoutMethods(steps, new Set())).toEqual(steps);
  });
});
