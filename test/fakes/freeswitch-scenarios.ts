/**
 * Recorded FreeSWITCH event-socket frames the fake (freeswitch-esl.ts) replays,
 * trimmed to the headers drachtio-fsmrf 4.1.2 / drachtio-modesl 1.3 read, with
 * `{placeholders}` filled per channel. Based on:
 *  - davec82/freeswitch-outboundsocket, test/support/fs_events.ex: captures
 *    from FreeSWITCH 1.8 of an outbound `connect` reply (CHANNEL_DATA as
 *    command/reply headers, URL-encoded, ending with Socket-Mode/Control),
 *    `uuid_dump` as api/response, CHANNEL_EXECUTE_COMPLETE as
 *    text/event-plain, text/disconnect-notice;
 *  - altanai/freeswitchexamples README.md: `sofia status` layout;
 *  - FreeSWITCH mod_event_socket reply texts (auth, event, filter, exit) as
 *    modesl's Parser/Connection expect them (Reply-Text "+OK accepted" is
 *    matched literally by modesl's auth()).
 */

/** Sent by FreeSWITCH as soon as an inbound client connects. */
export const AUTH_REQUEST = 'Content-Type: auth/request\n\n';

export const REPLY = {
  authOk: '+OK accepted',
  authErr: '-ERR invalid',
  eventOk: (format: string) => `+OK event listener enabled ${format}`,
  filterOk: (header: string, value: string) => `+OK filter added. [${header}]=[${value}]`,
  bye: '+OK bye',
  ok: '+OK',
  unknown: '-ERR command not found',
} as const;

export const DISCONNECT_NOTICE_BODY = 'Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n';

/** `sofia status` on drachtio/drachtio-freeswitch-mrf: the drachtio_mrf profile fsmrf INVITEs. {sip} = host:port. */
export const SOFIA_STATUS = `                     Name	   Type	                                      Data	State
=================================================================================================
            drachtio_mrf	profile	              sip:mod_sofia@{sip}	RUNNING (0)
=================================================================================================
1 profile 0 aliases
`;

/** `sofia status` of a FreeSWITCH without the drachtio_mrf profile. */
export const SOFIA_STATUS_NO_MRF = `                     Name	   Type	                                      Data	State
=================================================================================================
                internal	profile	              sip:mod_sofia@{sip}	RUNNING (0)
=================================================================================================
1 profile 0 aliases
`;

/** HEARTBEAT (every 20 s in FreeSWITCH); MediaServer reads the session counters from it. */
export const HEARTBEAT: Record<string, string> = {
  'Event-Name': 'HEARTBEAT',
  'Core-UUID': '{core}',
  'FreeSWITCH-Hostname': 'fs-fake',
  'FreeSWITCH-Switchname': 'fs-fake',
  'FreeSWITCH-IPv4': '127.0.0.1',
  'FreeSWITCH-IPv6': '::1',
  'Event-Calling-File': 'switch_core.c',
  'Event-Calling-Function': 'send_heartbeat',
  'Event-Info': 'System Ready',
  'Up-Time': '0 years, 0 days, 0 hours, 1 minute, 0 seconds, 0 milliseconds, 0 microseconds',
  'FreeSWITCH-Version': '1.10.11-release~64bit',
  'Session-Count': '{sessions}',
  'Max-Sessions': '{maxSessions}',
  'Session-Per-Sec': '0',
  'Session-Since-Startup': '{sessions}',
  'Idle-CPU': '98.000000',
};

/** The CHANNEL_DATA headers of the `connect` reply on an outbound connection (3pcc INVITE from fsmrf, answered). */
export const CHANNEL_DATA: Record<string, string> = {
  'Event-Name': 'CHANNEL_DATA',
  'Core-UUID': '{core}',
  'FreeSWITCH-Hostname': 'fs-fake',
  'Event-Calling-File': 'mod_event_socket.c',
  'Event-Calling-Function': 'outbound_socket',
  'Channel-State': 'CS_EXECUTE',
  'Channel-Call-State': 'ACTIVE',
  'Channel-Name': 'sofia/drachtio_mrf/drachtio@{sip}',
  'Unique-ID': '{uuid}',
  // fsmrf's Endpoint and MediaServer take the channel uuid from this header.
  'Channel-Unique-ID': '{uuid}',
  'Call-Direction': 'inbound',
  'Answer-State': 'answered',
  'Caller-Destination-Number': 'drachtio',
  'Caller-Unique-ID': '{uuid}',
  'Caller-Source': 'mod_sofia',
  'Caller-Context': 'default',
  variable_direction: 'inbound',
  variable_uuid: '{uuid}',
  'variable_sip_call_id': '{callId}',
  variable_sip_user_agent: '{userAgent}',
  'variable_sip_h_X-esl-outbound': '{eslOutbound}',
  variable_rtp_local_sdp_str: '{localSdp}',
  variable_local_media_ip: '{mediaIp}',
  variable_local_media_port: '{mediaPort}',
  variable_dtmf_type: 'rfc2833',
  variable_endpoint_disposition: 'ANSWER',
  variable_current_application_data: '{eslOutbound} async full',
  variable_current_application: 'socket',
  'Content-Type': 'command/reply',
  'Reply-Text': '+OK\n',
  'Socket-Mode': 'async',
  Control: 'full',
};

/** Body lines of `api uuid_dump <uuid>` after the re-INVITE with the callee's SDP. */
export const UUID_DUMP: Record<string, string> = {
  'Event-Name': 'CHANNEL_DATA',
  'Unique-ID': '{uuid}',
  'Channel-Call-State': 'ACTIVE',
  variable_rtp_local_sdp_str: '{localSdp}',
  variable_local_media_ip: '{mediaIp}',
  variable_local_media_port: '{mediaPort}',
  variable_switch_r_sdp: '{remoteSdp}',
  variable_remote_media_ip: '{remoteIp}',
  variable_remote_media_port: '{remotePort}',
  variable_dtmf_type: 'rfc2833',
  variable_rtp_use_codec_name: 'PCMU',
};

export const CHANNEL_EXECUTE: Record<string, string> = {
  'Event-Name': 'CHANNEL_EXECUTE',
  'Core-UUID': '{core}',
  'Event-Calling-File': 'switch_core_session.c',
  'Event-Calling-Function': 'switch_core_session_exec',
  'Channel-State': 'CS_EXECUTE',
  'Channel-Call-State': 'ACTIVE',
  'Unique-ID': '{uuid}',
  Application: '{app}',
  'Application-Data': '{arg}',
  'Application-UUID': '{appUuid}',
};

/** Application-Response: "FILE PLAYED" (also after uuid_break), "FILE NOT FOUND", "PLAYBACK ERROR" (mod_dptools playback). */
export const CHANNEL_EXECUTE_COMPLETE: Record<string, string> = {
  ...CHANNEL_EXECUTE,
  'Event-Name': 'CHANNEL_EXECUTE_COMPLETE',
  'Application-Response': '{response}',
  variable_playback_seconds: '{playbackSeconds}',
  variable_playback_ms: '{playbackMs}',
  variable_current_application: '{app}',
};

export const CHANNEL_HANGUP: Record<string, string> = {
  'Event-Name': 'CHANNEL_HANGUP',
  'Core-UUID': '{core}',
  'Channel-State': 'CS_HANGUP',
  'Channel-Call-State': 'HANGUP',
  'Unique-ID': '{uuid}',
  'Hangup-Cause': '{cause}',
};

export const CHANNEL_CALLSTATE_HANGUP: Record<string, string> = {
  'Event-Name': 'CHANNEL_CALLSTATE',
  'Core-UUID': '{core}',
  'Original-Channel-Call-State': 'ACTIVE',
  'Channel-Call-State': 'HANGUP',
  'Unique-ID': '{uuid}',
  'Hangup-Cause': '{cause}',
};

/** SDP FreeSWITCH answers fsmrf's offer-less INVITE with (becomes the offer to the callee). */
export const FS_LOCAL_SDP = `v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 {mediaIp}
s=FreeSWITCH
c=IN IP4 {mediaIp}
t=0 0
m=audio {mediaPort} RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
`.replace(/\n/g, '\r\n');

/** Fills `{name}` placeholders. */
export function fill(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{(\w+)\}/g, (m, k: string) => (k in values ? String(values[k]) : m));
}

export function fillHeaders(template: Record<string, string>, values: Record<string, string | number>): Record<string, string> {
  return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fill(v, values)]));
}
