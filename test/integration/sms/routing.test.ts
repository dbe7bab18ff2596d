/**
 * Routing over two SMSC processes by longest destination prefix, the default
 * route, and the transmitter + receiver bind mode.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { smscEntry, startGateway, startSmsc, submitRequest, type GatewayUnderTest, type TestSmsc } from '../../helpers/smsc.js';

let uk: TestSmsc;
let world: TestSmsc;
let gut: GatewayUnderTest | undefined;

beforeAll(async () => {
  [uk, world] = await Promise.all([startSmsc({ systemId: 'fv_uk', password: 'pw_uk' }), startSmsc({ systemId: 'fv_world', password: 'pw_world' })]);
});
afterAll(async () => {
  await Promise.all([uk?.stop(), world?.stop()]);
});
afterEach(async () => {
  await gut?.gateway.stop();
  gut = undefined;
  await Promise.all([uk.reset(), world.reset()]);
});

describe('routing', () => {
  it('sends each destination to the SMSC with the longest matching prefix, the rest to the default route', async () => {
    gut = await startGateway([
      smscEntry(uk, { name: 'uk', prefixes: ['+44'] }),
      smscEntry(world, { name: 'world' }),
      // A longer prefix wins over '+44' (same process as 'world', its own name and bind).
      smscEntry(world, { name: 'uk-mobile', prefixes: ['+447'] }),
    ]);
    await gut.waitUp();
    const to = ['+441632960001', '+447700900700', '+33612345678', '+4420794600', '+15550100'];
    const outcomes = await Promise.all(to.map((t) => gut!.gateway.submit(submitRequest(t))));
    expect(outcomes.map((o) => (o.kind === 'accepted' ? o.smsc : o.kind))).toEqual(['uk', 'uk-mobile', 'world', 'uk', 'world']);
    const [ukState, worldState] = await Promise.all([uk.state(), world.state()]);
    expect(ukState.submits.map((s) => s.destination).sort()).toEqual(['441632960001', '4420794600']);
    expect(worldState.submits.map((s) => s.destination).sort()).toEqual(['15550100', '33612345678', '447700900700']);
    // Receipts come back per SMSC, named after the config entry.
    for (const o of outcomes) expect((await gut.receiptFor(o)).smsc).toBe(o.kind === 'accepted' ? o.smsc : '');
    expect(gut.gateway.status().map((s) => [s.name, s.bindsUp])).toEqual([
      ['uk', 1],
      ['world', 1],
      ['uk-mobile', 1],
    ]);
  });

  it('without a default route, an unrouted destination fails at once', async () => {
    gut = await startGateway([smscEntry(uk, { name: 'uk', prefixes: ['+44'] })]);
    await gut.waitUp();
    expect(await gut.gateway.submit(submitRequest('+33612345678'))).toMatchObject({ kind: 'failed', reason: 'no_route' });
    expect((await uk.state()).submits).toHaveLength(0);
  });

  it('a routed SMSC that is down gives no_bind, not another SMSC', async () => {
    gut = await startGateway([smscEntry(uk, { name: 'uk', prefixes: ['+44'], password: 'wrong' }), smscEntry(world, { name: 'world' })], {
      bindWaitMs: 200,
    });
    await world.waitFor((s) => s.sessions.some((x) => x.bound) || undefined, 3_000, 'world bound');
    expect(await gut.gateway.submit(submitRequest('+447700900701'))).toEqual({ kind: 'retry', reason: 'no_bind', smsc: 'uk' });
    expect((await world.state()).submits).toHaveLength(0);
  });
});

describe('bind mode transmitter_receiver', () => {
  it('submits on the transmitter and takes receipts on the receiver', async () => {
    gut = await startGateway([smscEntry(uk, { name: 'uk', bindMode: 'transmitter_receiver', binds: 2 })]);
    await gut.waitUp();
    await uk.waitFor((s) => s.sessions.filter((x) => x.bound).length === 4 || undefined, 3_000, '2 TX + 2 RX');
    const outcomes = await Promise.all(['+447700900710', '+447700900711', '+447700900712'].map((t) => gut!.gateway.submit(submitRequest(t))));
    for (const o of outcomes) expect((await gut.receiptFor(o)).state).toBe('DELIVRD');
    const state = await uk.state();
    const byId = new Map(state.sessions.map((s) => [s.id, s.bindType]));
    expect(new Set(state.submits.map((s) => byId.get(s.session)))).toEqual(new Set(['transmitter']));
    expect(new Set(state.receipts.flatMap((r) => r.sessions.map((id) => byId.get(id))))).toEqual(new Set(['receiver']));
    await gut.gateway.stop();
    const after = await uk.state();
    expect(after.sessions.filter((s) => s.bound).every((s) => s.unbindReceived && s.closedAt !== null)).toBe(true);
    gut = undefined;
  });
});
