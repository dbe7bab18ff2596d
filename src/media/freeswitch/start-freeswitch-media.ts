import type { Logger } from 'pino';
import type { Config } from '../../config/schema.js';
import { DrachtioLink } from './drachtio-link.js';
import { FreeswitchMediaPlayer } from './freeswitch-media-player.js';

/** `media.backend: freeswitch` for main.ts: the drachtio connection, the player, readiness and stop. */
export interface FreeswitchMedia {
  readonly player: FreeswitchMediaPlayer;
  /** drachtio-server connected and at least one FreeSWITCH event socket up. */
  readonly ready: boolean;
  stop(): Promise<void>;
}

export async function startFreeswitchMedia(config: Readonly<Config>, logger: Logger): Promise<FreeswitchMedia> {
  const fs = config.media.freeswitch;
  const d = config.sip.drachtio;
  const drachtio = new DrachtioLink({
    host: d.host,
    port: d.port,
    secret: d.secret,
    enablePing: d.enablePing,
    pingIntervalMs: d.pingIntervalMs,
    reconnectMinMs: d.reconnectMinMs,
    reconnectMaxMs: d.reconnectMaxMs,
    logger,
  });
  const player = new FreeswitchMediaPlayer({
    srf: () => drachtio.current(),
    servers: fs.servers,
    listenAddress: fs.listenAddress,
    listenPort: fs.listenPort,
    ...(fs.promptDir !== undefined ? { promptDir: fs.promptDir } : {}),
    ...(fs.tts !== undefined ? { tts: fs.tts } : {}),
    profile: fs.profile,
    reconnectMinMs: fs.reconnectMinMs,
    reconnectMaxMs: fs.reconnectMaxMs,
    logger,
  });
  // Neither being down fails the boot: both reconnect, and readiness says when calls can be taken.
  await Promise.all([drachtio.start(), player.start()]);
  return {
    player,
    get ready() {
      return drachtio.connected && player.ready;
    },
    async stop() {
      await player.stop();
      drachtio.stop();
    },
  };
}
