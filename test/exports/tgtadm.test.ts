/**
 * Our tgtd management client (appliance/src/exports/tgtadm.ts) against the real thing: a stand-in
 * tgtd socket records what the real tgtadm sends for every request the agent makes, and our encoder
 * must produce the same bytes; then a real tgtd answers our requests, errors named after the request.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeControlPort } from '../../appliance/src/exports/tgt.js';
import { encodeRequest, tgtadm, TGTD_SOCKET_DIR, type TgtRequest } from '../../appliance/src/exports/tgtadm.js';
import { freePort } from '../helpers/ports.js';
import { sh } from '../daemon/agent-process.js';

/** Each request the agent sends, with the tgtadm command line that sends it. */
const CASES: [string[], TgtRequest][] = [
  [
    ['--mode', 'target', '--op', 'new', '--tid', '3', '-T', 'iqn.2026-11.org.bridge:x'],
    { mode: 'target', op: 'new', tid: 3, params: [['targetname', 'iqn.2026-11.org.bridge:x']] },
  ],
  [
    ['--mode', 'logicalunit', '--op', 'new', '--tid', '3', '--lun', '1', '-b', '/run/bridge/blocks/x/disk.img', '--bstype', 'rdwr'],
    {
      mode: 'logicalunit',
      op: 'new',
      tid: 3,
      lun: 1,
      params: [
        ['path', '/run/bridge/blocks/x/disk.img'],
        ['bstype', 'rdwr'],
      ],
    },
  ],
  [
    ['--mode', 'logicalunit', '--op', 'new', '--tid', '3', '--lun', '1', '-b', '/dev/vdb', '--bstype', 'rdwr', '--bsoflags', 'direct'],
    {
      mode: 'logicalunit',
      op: 'new',
      tid: 3,
      lun: 1,
      params: [
        ['path', '/dev/vdb'],
        ['bstype', 'rdwr'],
        ['bsoflags', 'direct'],
      ],
    },
  ],
  [
    ['--mode', 'logicalunit', '--op', 'update', '--tid', '3', '--lun', '1', '--params', 'readonly=1'],
    { mode: 'logicalunit', op: 'update', tid: 3, lun: 1, targetOps: 'readonly=1' },
  ],
  [
    ['--mode', 'account', '--op', 'new', '--user', 'alice', '--password', 'not-a-real-secret'],
    {
      mode: 'account',
      op: 'new',
      params: [
        ['user', 'alice'],
        ['password', 'not-a-real-secret'],
      ],
    },
  ],
  [['--mode', 'account', '--op', 'delete', '--user', 'alice'], { mode: 'account', op: 'delete', params: [['user', 'alice']] }],
  [['--mode', 'account', '--op', 'bind', '--tid', '3', '--user', 'alice'], { mode: 'account', op: 'bind', tid: 3, params: [['user', 'alice']] }],
  [
    ['--mode', 'account', '--op', 'bind', '--tid', '3', '--user', 'bob', '--outgoing'],
    { mode: 'account', op: 'bind', tid: 3, outgoing: true, params: [['user', 'bob']] },
  ],
  [
    ['--mode', 'target', '--op', 'bind', '--tid', '3', '--initiator-name', 'iqn.2026-11.org.test:a'],
    { mode: 'target', op: 'bind', tid: 3, params: [['initiator-name', 'iqn.2026-11.org.test:a']] },
  ],
  [
    ['--mode', 'target', '--op', 'bind', '--tid', '3', '--initiator-address', 'ALL'],
    { mode: 'target', op: 'bind', tid: 3, params: [['initiator-address', 'ALL']] },
  ],
  [['--mode', 'target', '--op', 'delete', '--force', '--tid', '3'], { mode: 'target', op: 'delete', tid: 3, force: true }],
  [['--mode', 'target', '--op', 'show'], { mode: 'target', op: 'show' }],
  [['--mode', 'system', '--op', 'show'], { mode: 'system', op: 'show' }],
];

describe('tgtd management protocol', () => {
  let fake: Server | undefined;
  let fakePort = 0;
  const received: Buffer[] = [];

  beforeAll(async () => {
    mkdirSync(TGTD_SOCKET_DIR, { recursive: true });
    fakePort = freeControlPort();
    fake = createServer((c) => {
      const chunks: Buffer[] = [];
      c.on('data', (d: Buffer) => {
        chunks.push(d);
        const all = Buffer.concat(chunks);
        if (all.length >= 120 && all.length >= all.readUInt32LE(72)) {
          received.push(all);
          const rsp = Buffer.alloc(8);
          rsp.writeUInt32LE(8, 4);
          c.end(rsp);
        }
      });
    });
    await new Promise<void>((r) => fake!.listen(`${TGTD_SOCKET_DIR}/socket.${fakePort}`, r));
  });

  afterAll(async () => {
    await new Promise((r) => fake?.close(r));
    rmSync(`${TGTD_SOCKET_DIR}/socket.${fakePort}`, { force: true });
  });

  it('sends, for every request the agent makes, the bytes the real tgtadm sends', async () => {
    for (const [args, req] of CASES) {
      received.length = 0;
      const r = await sh('tgtadm', ['-C', String(fakePort), '--lld', 'iscsi', ...args]);
      expect(r.code, `tgtadm ${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(received, args.join(' ')).toHaveLength(1);
      expect(encodeRequest(req).toString('hex'), args.join(' ')).toBe(received[0]!.toString('hex'));
      // And our client's own bytes on the wire are the same.
      received.length = 0;
      await tgtadm(fakePort, req);
      expect(received[0]!.toString('hex')).toBe(encodeRequest(req).toString('hex'));
    }
  });

  it('refuses values tgtd would split or cut, without naming the value', () => {
    expect(() =>
      encodeRequest({
        mode: 'account',
        op: 'new',
        params: [
          ['user', 'a'],
          ['password', 'se,cret'],
        ],
      }),
    ).toThrow(/password must not contain a comma/);
    try {
      encodeRequest({ mode: 'account', op: 'new', params: [['password', 'se,cret']] });
    } catch (e) {
      expect(String(e)).not.toContain('se,cret');
    }
  });

  it('a real tgtd answers show and names failed requests', async () => {
    const control = freeControlPort();
    const port = await freePort();
    const tgtd = spawn('tgtd', ['-f', '-C', String(control), '--iscsi', `portal=127.0.0.1:${port}`], { stdio: 'ignore' });
    try {
      let up = false;
      for (let i = 0; i < 100 && !up; i++) {
        up = await tgtadm(control, { mode: 'system', op: 'show' }).then(
          (t) => /System/.test(t),
          () => false,
        );
        if (!up) await new Promise((r) => setTimeout(r, 100));
      }
      expect(up).toBe(true);
      await tgtadm(control, { mode: 'target', op: 'new', tid: 1, params: [['targetname', 'iqn.2026-11.org.test:t1']] });
      expect(await tgtadm(control, { mode: 'target', op: 'show' })).toMatch(/^Target 1: iqn\.2026-11\.org\.test:t1$/m);
      await expect(tgtadm(control, { mode: 'target', op: 'new', tid: 1, params: [['targetname', 'iqn.2026-11.org.test:t1']] })).rejects.toThrow(
        'tgtd target new (tid 1): this target already exists',
      );
      await expect(tgtadm(control, { mode: 'target', op: 'delete', tid: 7 })).rejects.toThrow("tgtd target delete (tid 7): can't find the target");
      await tgtadm(control, {
        mode: 'account',
        op: 'new',
        params: [
          ['user', 'u1'],
          ['password', 'secret-0123456'],
        ],
      });
      expect(await tgtadm(control, { mode: 'account', op: 'show' })).toMatch(/^\s+u1$/m);
      await tgtadm(control, { mode: 'target', op: 'delete', tid: 1, force: true });
      await tgtadm(control, { mode: 'system', op: 'delete' });
    } finally {
      tgtd.kill('SIGKILL');
    }
  });
});
