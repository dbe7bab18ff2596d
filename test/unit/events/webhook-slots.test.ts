import { describe, expect, it } from 'vitest';
import { SlotsClosedError, WebhookSlots, type ReleaseSlot } from '../../../src/events/webhook-slots.js';

/** Lets pending promise callbacks run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('webhook slots per receiver origin', () => {
  const never = new AbortController().signal;

  it('admits up to the limit at once; the others wait, and get a slot in the order they came, one per release', async () => {
    const slots = new WebhookSlots(2);
    const o = 'http://a.test';
    const first = await slots.acquire(o, never);
    const second = await slots.acquire(o, never);
    const admitted: number[] = [];
    const waiting = [3, 4, 5].map((n) => slots.acquire(o, never).then((release) => (admitted.push(n), release)));
    await settle();
    expect(admitted).toEqual([]);
    expect(slots.stats(o)).toEqual({ held: 2, waiting: 3 });
    second();
    await settle();
    expect(admitted).toEqual([3]);
    first();
    await settle();
    expect(admitted).toEqual([3, 4]);
    for (const release of await Promise.all(waiting.slice(0, 2))) release();
    await settle();
    expect(admitted).toEqual([3, 4, 5]);
    (await waiting[2]!)();
    // Nothing held or waiting: the origin is forgotten.
    expect(slots.stats(o)).toEqual({ held: 0, waiting: 0 });
  });

  it('totals() adds up every origin: slots held and deliveries waiting (the /metrics gauges); nothing once all ended', async () => {
    const slots = new WebhookSlots(1);
    const [a, b] = ['http://a.test', 'https://b.test'];
    const ra = await slots.acquire(a, never);
    const rb = await slots.acquire(b, never);
    const waiting = [slots.acquire(a, never), slots.acquire(a, never), slots.acquire(b, never)];
    await settle();
    expect(slots.totals()).toEqual({ held: 2, waiting: 3 });
    ra();
    await settle();
    // The slot passed to a's first waiter: still held, one waiter fewer.
    expect(slots.totals()).toEqual({ held: 2, waiting: 2 });
    rb();
    for (const release of await Promise.all(waiting.slice(0, 1).concat(waiting.slice(2)))) release();
    (await waiting[1]!)();
    expect(slots.totals()).toEqual({ held: 0, waiting: 0 });
  });

  it('a slot is given back once: a second release of it frees nothing more', async () => {
    const slots = new WebhookSlots(1);
    const o = 'http://a.test';
    const release = await slots.acquire(o, never);
    let admitted = 0;
    const waiting = [1, 2].map(() => slots.acquire(o, never).then((r) => (admitted++, r)));
    release();
    release();
    await settle();
    expect(admitted).toBe(1);
    expect(slots.stats(o)).toEqual({ held: 1, waiting: 1 });
    const next: ReleaseSlot = await waiting[0]!;
    next();
    await settle();
    expect(admitted).toBe(2);
  });

  it('a waiter whose signal aborts leaves the queue at once, with the signal\'s reason; one aborted before it asks is refused', async () => {
    const slots = new WebhookSlots(1);
    const o = 'http://a.test';
    const release = await slots.acquire(o, never);
    const deadline = new AbortController();
    const gaveUp = slots.acquire(o, deadline.signal);
    const after = slots.acquire(o, never);
    deadline.abort(new Error('deadline'));
    await expect(gaveUp).rejects.toThrow('deadline');
    expect(slots.stats(o)).toEqual({ held: 1, waiting: 1 });
    // The slot goes to the one behind it.
    release();
    (await after)();
    expect(slots.stats(o)).toEqual({ held: 0, waiting: 0 });
    await expect(slots.acquire(o, deadline.signal)).rejects.toThrow('deadline');
    expect(slots.stats(o)).toEqual({ held: 0, waiting: 0 });
  });

  it('close(): every waiter fails at once with SlotsClosedError, later ones too; held slots are still given back', async () => {
    const slots = new WebhookSlots(1);
    const o = 'http://a.test';
    const release = await slots.acquire(o, never);
    const waiting = [slots.acquire(o, never), slots.acquire('http://b.test', never).then(() => 'admitted')];
    slots.close();
    await expect(waiting[0]).rejects.toThrow(SlotsClosedError);
    // Another origin had a free slot: it was admitted before the close.
    await expect(waiting[1]).resolves.toBe('admitted');
    await expect(slots.acquire(o, never)).rejects.toThrow(SlotsClosedError);
    release();
    expect(slots.stats(o)).toEqual({ held: 0, waiting: 0 });
  });

  it('origins do not share slots', async () => {
    const slots = new WebhookSlots(1);
    await slots.acquire('http://a.test', never);
    let other = false;
    void slots.acquire('https://a.test', never).then(() => (other = true));
    await settle();
    expect(other).toBe(true);
  });
});
