import { describe, expect, it } from 'vitest';
import { onAbort } from '../../../src/engine/abort-fanout.js';

describe('onAbort (one listener per shutdown signal)', () => {
  it('runs every subscriber still subscribed, once, and none that unsubscribed', () => {
    const c = new AbortController();
    const ran: string[] = [];
    onAbort(c.signal, () => ran.push('a'));
    const off = onAbort(c.signal, () => ran.push('b'));
    onAbort(c.signal, () => ran.push('c'));
    off();
    c.abort();
    c.abort();
    expect(ran).toEqual(['a', 'c']);
  });

  it('runs at once on a signal that already aborted', () => {
    const c = new AbortController();
    c.abort();
    let ran = 0;
    onAbort(c.signal, () => ran++);
    expect(ran).toBe(1);
  });

  it('a subscriber that unsubscribes another during the abort does not stop it from running (all due ones run)', () => {
    const c = new AbortController();
    const ran: string[] = [];
    let offB = (): void => undefined;
    onAbort(c.signal, () => {
      ran.push('a');
      offB();
    });
    offB = onAbort(c.signal, () => ran.push('b'));
    c.abort();
    expect(ran).toEqual(['a', 'b']);
  });
});
