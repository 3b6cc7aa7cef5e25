/**
 * Making a restored copy of a template VM its own. Every copy starts from the same saved memory: the
 * same kernel RNG state, the same OpenSSL DRBG state inside this very agent process (Node seeds it at
 * start-up, before any of our code runs), the same SSH host key, and a clock stopped at the moment the
 * template was saved. Identical DRBGs in two instances would reuse AES-GCM nonces in the store and
 * TLS keys in the S3 client; identical host keys would let one instance impersonate another.
 *
 * The host's first words to a copy come over a serial line, before anything connects over the network
 * (an SSH handshake already draws randomness): `seed <hex entropy> <host time, ms>`. In order:
 *   1. kernel: the host's entropy is mixed in and credited (RNDADDENTROPY) and the CRNG is reseeded
 *      from it at once (RNDRESEEDCRNG); the cloud kernel has no vmgenid;
 *   2. OpenSSL: a DRBG reseeds from its parent when the clock reads *earlier* than its last reseed, and
 *      the primary DRBG then reseeds from getrandom() — now fresh. So the clock is stepped back before
 *      this process started, one randomBytes() call makes the primary reseed, and every other DRBG
 *      (other threads, the private one TLS uses) follows at its next use, because its parent's reseed
 *      counter moved. Measured: without this step, two copies returned the same randomBytes() (with
 *      it they differ: test/wrapper/snapshot.test.ts);
 *   3. the clock is set to the host's;
 *   4. Node's own batches of random values (randomUUID, randomInt) are used up, so they refill fresh;
 *   5. a new SSH host key (ssh-host-key.ts); its fingerprint is the reply (`ok <sha256 hex of the
 *      key blob>`), so the host pins it before its first connection. sshd re-executes per connection
 *      and reads the key then.
 * The ioctls and the clock need a helper process (perl-base, in Debian's minbase): it is started
 * before the VM is saved, so that a restored copy forks nothing on this path (a fork of the agent
 * costs ~0.1 s under emulation). Nothing else in the guest draws randomness meanwhile: the host
 * opens no connection before the reply.
 * Math.random (V8's own generator) cannot be reseeded; nothing security-relevant uses it.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { ReadStream } from 'node:tty';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import type { Logger } from '../../../shared/src/logger.js';
import { generateHostKey, installHostKey } from './ssh-host-key.js';

export const HOST_KEY = '/etc/ssh/ssh_host_ed25519_key';
export const MIN_ENTROPY_BYTES = 32;

/*
 * perl-base only (no modules). One request per line, one answer per line ("ok" or "error ..."):
 *   seed HEX [SECONDS]  mix HEX into the kernel RNG, credit it, reseed the CRNG; then set the clock
 *   time MS             set the clock
 * RNDADDENTROPY = _IOW('R', 0x03, int[2]) takes struct rand_pool_info { int entropy_count (bits);
 * int buf_size (bytes); u32 buf[]; }; RNDRESEEDCRNG = _IO('R', 0x07). 164 is settimeofday on x86_64
 * (the appliance's only architecture).
 */
const PERL_HELPER = String.raw`
$| = 1;
open(my $u, '+<', '/dev/urandom') or die "/dev/urandom: $!\n";
sub settime { syscall(164, pack('q q', int($_[0] / 1000), ($_[0] % 1000) * 1000), 0) == 0 or return "settimeofday: $!"; return ''; }
while (my $line = <STDIN>) {
  chomp $line;
  my ($cmd, @a) = split / /, $line;
  my $err = '';
  if ($cmd eq 'seed') {
    my $e = pack('H*', $a[0]);
    if (!ioctl($u, 0x40085203, pack('i i', 8 * length($e), length($e)) . $e)) { $err = "RNDADDENTROPY: $!"; }
    elsif (!ioctl($u, 0x5207, 0)) { $err = "RNDRESEEDCRNG: $!"; }
    elsif (defined $a[1]) { $err = settime($a[1] * 1000); }
  } elsif ($cmd eq 'time') { $err = settime($a[0]); }
  else { $err = "unknown request $cmd"; }
  print $err ? "error $err\n" : "ok\n";
}
`;

/** The root helper for what Node cannot do itself: RNG ioctls and setting the clock. */
export class RootHelper {
  private buf = '';
  private readonly waiting: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private exited: Error | undefined;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiting.shift();
        if (line === 'ok') w?.resolve();
        else w?.reject(new BridgeError('EIO', line.replace(/^error /, '')));
      }
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('exit', (code) => {
      this.exited = new BridgeError('EIO', `the root helper (perl) exited ${code}: ${stderr.trim()}`);
      for (const w of this.waiting.splice(0)) w.reject(this.exited);
    });
  }

  static start(): RootHelper {
    return new RootHelper(spawn('perl', ['-e', PERL_HELPER], { stdio: ['pipe', 'pipe', 'pipe'] }));
  }

  private request(line: string): Promise<void> {
    if (this.exited) return Promise.reject(this.exited);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.child.stdin.write(line + '\n');
    });
  }

  /** Mixes in and credits `entropy`, reseeds the kernel CRNG; then sets the clock to `seconds`, if given. */
  seedKernel(entropy: Buffer, seconds?: number): Promise<void> {
    return this.request(`seed ${entropy.toString('hex')}${seconds !== undefined ? ` ${Math.floor(seconds)}` : ''}`);
  }

  setClock(timeMs: number): Promise<void> {
    return this.request(`time ${Math.round(timeMs)}`);
  }

  stop(): void {
    this.child.stdin.end();
  }
}

/** Sets the clock without a helper (one perl run): for a `configure` that finds it off. */
export function setClockOnce(timeMs: number): void {
  const r = spawnSync('perl', ['-e', PERL_HELPER], { input: `time ${Math.round(timeMs)}\n`, encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0 || r.stdout.trim() !== 'ok') throw new BridgeError('EIO', `setting the clock: ${r.stdout.trim() || r.stderr.trim() || r.error?.message}`);
}

export function parseEntropy(hex: string, what: string): Buffer {
  if (!/^([0-9a-f]{2})+$/i.test(hex) || hex.length < MIN_ENTROPY_BYTES * 2)
    throw new BridgeError('EINVAL', `${what}: expected at least ${MIN_ENTROPY_BYTES} random bytes as hex`);
  return Buffer.from(hex, 'hex');
}

/** Steps 1-4 of the header: kernel RNG, OpenSSL DRBGs, clock, Node's batches. Returns the clock step (ms). */
export async function reseedAfterRestore(helper: RootHelper, entropy: Buffer, hostTimeMs: number, receivedAt: number): Promise<number> {
  // Any time before this process started is earlier than each of its DRBGs' last reseed.
  const startedSeconds = Math.floor((Date.now() - process.uptime() * 1000) / 1000);
  const before = Date.now();
  await helper.seedKernel(entropy, startedSeconds - 2 * 3600);
  randomBytes(32);
  const now = hostTimeMs + (performance.now() - receivedAt);
  await helper.setClock(now);
  for (let i = 0; i < 128; i++) randomUUID();
  for (let i = 0; i < 1024; i++) randomInt(0xffffffffffff);
  return Math.round(now - before);
}

export interface SeedLine {
  entropy: Buffer;
  timeMs: number;
}

export function parseSeedLine(line: string): SeedLine {
  const m = /^seed ([0-9a-f]+) (\d{10,})$/i.exec(line.trim());
  if (!m) throw new BridgeError('EINVAL', 'expected "seed <hex entropy> <host time ms>"');
  return { entropy: parseEntropy(m[1]!, 'seed'), timeMs: Number(m[2]) };
}

export interface RestoreSeedListener {
  readonly applied: boolean;
  close(): void;
}

/**
 * Waits on the template's serial device for the host's seed line and applies it (once). Bad lines
 * get `error <why>` and the listener keeps waiting.
 */
export function listenForRestoreSeed(device: string, helper: RootHelper, log: Logger, hostKeyFile = HOST_KEY): RestoreSeedListener {
  const readFd = openSync(device, 'r');
  const writeFd = openSync(device, 'w');
  const input = new ReadStream(readFd);
  input.setRawMode(true);
  let applied = false;
  let busy = false;
  let closed = false;
  let buf = '';
  const reply = (text: string): void => {
    try {
      writeSync(writeFd, text + '\n');
    } catch (e) {
      log.warn('cannot answer on the seed device', { device, error: errorMessage(e) });
    }
  };
  const close = (): void => {
    if (closed) return;
    closed = true;
    input.setRawMode(false);
    input.destroy();
    closeSync(writeFd);
  };
  const handle = async (line: string): Promise<void> => {
    const receivedAt = performance.now();
    try {
      const seed = parseSeedLine(line);
      const stepMs = await reseedAfterRestore(helper, seed.entropy, seed.timeMs, receivedAt);
      const key = generateHostKey();
      installHostKey(key, hostKeyFile);
      applied = true;
      reply(`ok ${key.sha256}`);
      log.info('restored copy reseeded', { clockStepMs: stepMs, ms: Math.round(performance.now() - receivedAt), hostKey: key.sha256.slice(0, 16) });
      close();
    } catch (e) {
      log.error('restore seed failed', { error: errorMessage(e) });
      reply(`error ${errorMessage(e).replace(/\s+/g, ' ')}`);
    }
  };
  const next = (): void => {
    let nl: number;
    while (!applied && !busy && (nl = buf.search(/[\r\n]/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.trim()) continue;
      busy = true;
      void handle(line).finally(() => {
        busy = false;
        next();
      });
    }
  };
  input.on('data', (chunk: Buffer) => {
    buf += chunk.toString('latin1');
    next();
  });
  input.on('error', (e) => log.warn('seed device read failed', { device, error: e.message }));
  return {
    get applied() {
      return applied;
    },
    close,
  };
}
