import { describe, expect, it } from 'vitest';
import { drachtioFailure } from '../../../src/sip/drachtio/drachtio-originator.js';
import { q850Cause } from '../../../src/sip/reason.js';

describe('q850Cause (RFC 3326 Reason header)', () => {
  it('reads the cause and text of a Q.850 value', () => {
    expect(q850Cause(['Q.850;cause=16;text="Normal call clearing"'])).toEqual({ cause: 16, text: 'Normal call clearing' });
    expect(q850Cause(['q.850 ; Cause=34'])).toEqual({ cause: 34 });
  });

  it('finds it among several values, in one header or several, after a SIP one', () => {
    expect(q850Cause(['SIP;cause=486;text="Busy Here", Q.850;cause=17;text="User busy"'])).toEqual({ cause: 17, text: 'User busy' });
    expect(q850Cause(['SIP;cause=404', 'Q.850;cause=1'])).toEqual({ cause: 1 });
  });

  it('keeps a quoted text whole (semicolons and commas in it) and unescaped, printable and bounded', () => {
    expect(q850Cause(['Q.850;cause=21;text="Call rejected; by policy, \\"CLI\\""'])).toEqual({ cause: 21, text: 'Call rejected; by policy, "CLI"' });
    expect(q850Cause([`Q.850;cause=21;text="${'x'.repeat(200)}\u0007"`])!.text).toHaveLength(80);
    expect(q850Cause(['Q.850;cause=21;text="\r\n"'])).toEqual({ cause: 21 });
  });

  it('nothing for no Q.850 value, or a cause outside 1-127', () => {
    expect(q850Cause([])).toBeUndefined();
    expect(q850Cause(['SIP;cause=480'])).toBeUndefined();
    expect(q850Cause(['Q.850;cause=0', 'Q.850;cause=128', 'Q.850;cause=abc', 'Q.850;text="x"'])).toBeUndefined();
  });

  it('drachtio: the failure of a final response carries the cause of its Reason header', () => {
    expect(drachtioFailure(404, 'Not Found', true, 'Q.850;cause=1;text="Unallocated number"')).toEqual({
      reason: 'not_found',
      status: 404,
      phrase: 'Not Found',
      q850: { cause: 1, text: 'Unallocated number' },
    });
    expect(drachtioFailure(486, 'Busy Here', true)).toEqual({ reason: 'busy', status: 486, phrase: 'Busy Here' });
  });
});
