/**
 * Routing by destination prefix, for SIP trunks (`sip.trunks[].prefixes`) and SMSCs (`sms.smscs[].prefixes`) alike:
 * the items with the longest prefix `to` starts with, else those without prefixes (the default route). Empty: no route.
 */
export function routeByPrefix<T>(items: readonly T[], to: string, prefixesOf: (item: T) => readonly string[] | undefined): T[] {
  let bestLength = 0;
  let best: T[] = [];
  for (const item of items) {
    let length = 0;
    for (const p of prefixesOf(item) ?? []) if (p.length > length && to.startsWith(p)) length = p.length;
    if (length > bestLength) {
      bestLength = length;
      best = [item];
    } else if (length > 0 && length === bestLength) {
      best.push(item);
    }
  }
  return best.length > 0 ? best : items.filter((item) => (prefixesOf(item) ?? []).length === 0);
}
