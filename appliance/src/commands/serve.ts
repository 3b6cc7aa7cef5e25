/**
 * `bridge-agent serve` runs the daemon; `status`, `secret put`, `config set cache-size`, `reload` and
 * `stop` are its clients over the control socket (the host wrapper runs them over SSH, so their
 * output is a stable interface: see docs/agent.md).
 */
import type { Command } from 'commander';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { parseAgentConfig, type AgentConfig } from '../../../shared/src/config.js';
import { BridgeError, errorMessage } from '../../../shared/src/errors.js';
import { configureLogger, logger, type LogLevel } from '../../../shared/src/logger.js';
import {
  CONTROL_SOCKET,
  type AgentStatus,
  type ConfigureParams,
  type ConfigureResult,
  type ControlRequest,
  type RandomProbe,
} from '../../../shared/src/protocol.js';
import { VERSION } from '../../../shared/src/version.js';
import type { Agent } from '../daemon/agent.js';
import { formatSize, parseSize } from '../../../shared/src/size.js';
import { controlRequest, listenControl } from '../daemon/control.js';
import { onShutdown, shutdown, untilShutdown } from '../process/shutdown.js';
import { action, output } from './common.js';
import { pidAlive } from '../exports/procs.js';

const DEFAULT_RUNTIME = '/run/bridge';
/** How long the agent waits for the disks its configuration names by serial. */
const DISK_WAIT_MS = 30_000;

async function readConfig(path: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await fsp.readFile(path, 'utf8');
  } catch (e) {
    throw new BridgeError('CONFIG', `cannot read config ${path}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BridgeError('CONFIG', `${path}: not valid JSON: ${errorMessage(e)}`);
  }
  return parseAgentConfig(raw, path);
}

interface ClientOptions {
  runtimeDir?: string;
  config?: string;
  json?: boolean;
}

/** The control socket: from --runtime-dir, the runtimeDir of --config, $BRIDGE_RUNTIME_DIR, or /run/bridge. */
async function socketOf(o: ClientOptions): Promise<string> {
  if (o.runtimeDir) return join(o.runtimeDir, CONTROL_SOCKET);
  if (o.config) return join((await readConfig(o.config)).runtimeDir, CONTROL_SOCKET);
  return join(process.env.BRIDGE_RUNTIME_DIR || DEFAULT_RUNTIME, CONTROL_SOCKET);
}

function clientCommand(cmd: Command): Command {
  return cmd
    .option('--runtime-dir <dir>', `the agent's runtime directory (default $BRIDGE_RUNTIME_DIR or ${DEFAULT_RUNTIME})`)
    .option('--config <file>', "take the runtime directory from the agent's config file");
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) throw new BridgeError('EINVAL', 'pipe the secret on standard input, e.g. printf %s "$PW" | bridge-agent secret put NAME');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

function statusText(s: AgentStatus): string {
  const lines = [`agent ${s.version} pid ${s.pid} up ${s.uptimeSeconds}s ${s.ready ? 'READY' : 'NOT READY'}`];
  const row = (c: { name: string; kind: string; health: string; error?: string }, extra = ''): string =>
    `  ${c.health.padEnd(9)} ${c.kind.padEnd(9)} ${c.name}${extra}${c.error ? `  (${c.error})` : ''}`;
  lines.push('sources:', ...s.sources.map((c) => row(c)));
  if (s.stages.length) lines.push('stages:', ...s.stages.map((c) => row(c)));
  if (s.exports.length) lines.push('exports:', ...s.exports.map((e) => row(e, e.endpoint ? `  ${e.endpoint.url}` : '')));
  return lines.join('\n');
}

/** Fresh output of the agent's random sources (main thread, a pool thread, Node's UUID batch). */
async function probeRandom(): Promise<RandomProbe> {
  const { randomBytes, randomUUID } = await import('node:crypto');
  const pool = await new Promise<Buffer>((resolve, reject) => randomBytes(16, (e, b) => (e ? reject(e) : resolve(b))));
  return { mainThread: randomBytes(16).toString('hex'), poolThread: pool.toString('hex'), uuid: randomUUID() };
}

/** The requests a running agent answers. */
function agentMethod(agent: Agent, req: ControlRequest): Promise<unknown> | unknown {
  switch (req.method) {
    case 'status':
      return agent.status();
    case 'putSecret':
      return agent.putSecret(req.params.name, req.params.value);
    case 'setCacheSize':
      return agent.setCacheSize(req.params.bytes, req.params.source);
    case 'reload':
      return agent.reload();
    case 'configure':
      throw new BridgeError('EBUSY', 'the agent is already configured');
    default:
      throw new BridgeError('EINVAL', `unknown method "${(req as { method: string }).method}"`);
  }
}

interface ServeOptions {
  config?: string;
  configDrive?: string | true;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the agent: open sources, build stages, serve the exports until SIGTERM or `bridge-agent stop`')
    .option('--config <file>', 'agent config (JSON, see docs/config.md)')
    .option(
      '--config-drive [device]',
      'take the configuration from the config drive (the appliance boot; default: the disk with serial bridge-config, else a scan); a template drive makes the agent wait for `configure`',
    )
    .option('--json', 'print the status as JSON once started (else one "ready" line)')
    .action(
      action(async (opts: ServeOptions) => {
        if (!opts.config === !opts.configDrive) throw new BridgeError('EINVAL', 'serve: give --config FILE or --config-drive [DEVICE]');
        let config: AgentConfig | undefined;
        let configPath = opts.config;
        let seedDevice: string | undefined;
        if (opts.config) config = await readConfig(opts.config);
        else {
          const { applyGuestConfig, findConfigDrive, readConfigDrive } = await import('../guest/config-drive.js');
          const device = typeof opts.configDrive === 'string' ? opts.configDrive : findConfigDrive();
          const drive = readConfigDrive(device);
          applyGuestConfig(drive, device);
          config = drive.agent;
          if (config) configPath = join(DEFAULT_RUNTIME, 'agent.json');
          seedDevice = drive.template?.seedDevice;
        }
        // The daemon outlives whoever started it: a closed stdout/stderr must not become a fatal error.
        process.stdout.on('error', () => undefined);
        process.stderr.on('error', () => undefined);
        // The config's log settings apply unless given on the command line.
        if (config && program.getOptionValueSource('logLevel') === 'default')
          configureLogger({ level: config.log.level as LogLevel, json: config.log.json || program.opts().logJson });
        let log = logger().child({ component: 'serve' });
        const imageVersion = await fsp
          .readFile('/etc/bridge-image-version', 'utf8')
          .then((t) => t.trim())
          .catch(() => process.env.BRIDGE_IMAGE_VERSION);
        // Loaded here so that the client commands (status, secret, ...) start without the daemon's modules.
        const { Agent } = await import('../daemon/agent.js');
        let agent: Agent | undefined;
        /** Secrets that arrive while the agent is still starting are kept for its first build: a
         * build of their own could race the start's leftover sweep. */
        let agentStarted = false;
        let stashed = false;
        const startedAt = Date.now();

        const startAgent = async (cfg: AgentConfig, afterClaim?: () => Promise<void>): Promise<void> => {
          const a = new Agent(cfg, { log, ...(configPath ? { configPath } : {}), ...(imageVersion ? { imageVersion } : {}) });
          agent = a;
          onShutdown('agent', () => a.stop());
          try {
            // In the appliance, disks may still be arriving (hot-plugged into a restored template copy,
            // or on a controller that probes asynchronously), and bridge-init loads fuse and loop
            // beside the agent's start.
            if (!opts.config) {
              const { MODULE_DEVICES, waitForPaths, waitForSerials, wantedSerials } = await import('../guest/disks.js');
              const t0 = Date.now();
              await Promise.all([waitForSerials(wantedSerials(cfg), DISK_WAIT_MS, log), waitForPaths(MODULE_DEVICES, DISK_WAIT_MS, log)]);
              log.debug('disks and device nodes present', { waitedMs: Date.now() - t0 });
            }
            await a.start(afterClaim);
            agentStarted = true;
            if (stashed) await a.reconcile();
          } catch (e) {
            // Undo what was started (control socket, mounts) so that the process can exit.
            await shutdown(`start failed: ${errorMessage(e)}`, 1);
            throw e;
          }
          const s = a.status();
          output(
            opts.json ?? false,
            s,
            () =>
              `bridge-agent ${s.ready ? 'ready' : 'started'}: ${s.exports.filter((e) => e.health === 'ok').length}/${s.exports.length} exports ok; control socket ${a.layout.socket}`,
          );
        };
        const listen = async (socket: string): Promise<void> => {
          const server = await listenControl(socket, handle, log);
          onShutdown('control socket', async () => {
            await new Promise<void>((r) => server.close(() => r()));
            await fsp.rm(socket, { force: true });
          });
        };

        // A template's agent: waits for its restore seed (serial line), then for `configure`.
        let seed: { readonly applied: boolean } | undefined;
        const awaitingStatus = (): AgentStatus => ({
          version: VERSION,
          ...(imageVersion ? { imageVersion } : {}),
          ready: false,
          awaitingConfiguration: true,
          pid: process.pid,
          uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
          sources: [],
          stages: [],
          exports: [],
        });
        const configure = async (params: ConfigureParams): Promise<ConfigureResult> => {
          if (!seed?.applied)
            throw new BridgeError('EACCES', 'configure: this copy has not received its restore seed yet (the host sends it on the serial line first)');
          const { applyConfigure } = await import('../guest/configure.js');
          const { config: cfg, result } = applyConfigure(params, { runtimeDir: DEFAULT_RUNTIME });
          configPath = join(DEFAULT_RUNTIME, 'agent.json');
          if (program.getOptionValueSource('logLevel') === 'default') {
            configureLogger({ level: cfg.log.level as LogLevel, json: cfg.log.json || program.opts().logJson });
            log = logger().child({ component: 'serve' });
          }
          log.info('configured', { name: result.hostname, clockStepMs: result.clockStepMs });
          // Runs on: the host polls status while sources come up, as after a cold boot.
          void startAgent(cfg).catch((e: unknown) => log.error('agent start failed', { error: errorMessage(e) }));
          return result;
        };
        const handle = async (req: ControlRequest): Promise<unknown> => {
          if (req.method === 'shutdown') {
            setTimeout(() => void shutdown('stop requested over the control socket'), 50);
            return { stopping: true };
          }
          if (req.method === 'probeRandom') return probeRandom();
          if (agent && !agentStarted && req.method === 'putSecret') {
            const changed = agent.secrets.put(req.params.name, req.params.value);
            stashed ||= changed;
            log.info('secret received while starting', { name: req.params.name, changed });
            return { changed };
          }
          if (agent) return agentMethod(agent, req);
          if (req.method === 'status') return awaitingStatus();
          if (req.method === 'configure') return configure(req.params);
          throw new BridgeError('EBUSY', `"${req.method}": the agent is waiting for its configuration (configure)`);
        };

        if (config) await startAgent(config, () => listen(join(config.runtimeDir, CONTROL_SOCKET)));
        else {
          if (!seedDevice) throw new BridgeError('CONFIG', 'the config drive has neither an agent configuration nor a template seed device');
          const { listenForRestoreSeed, RootHelper } = await import('../guest/restore.js');
          // Loaded before the VM is saved, so that a restored copy does not load them on its way up
          // (the daemon loads store and FAT32 code only for configs that use them). None of these
          // draws randomness at load time: values made before the save would be the same in every copy.
          await Promise.all([import('../guest/configure.js'), import('../guest/disks.js'), import('../store/index.js'), import('../fat32/index.js')]);
          await fsp.mkdir(DEFAULT_RUNTIME, { recursive: true, mode: 0o700 });
          const helper = RootHelper.start();
          const listener = listenForRestoreSeed(seedDevice, helper, log);
          seed = listener;
          onShutdown('restore seed', async () => {
            listener.close();
            helper.stop();
          });
          await listen(join(DEFAULT_RUNTIME, CONTROL_SOCKET));
          output(
            opts.json ?? false,
            awaitingStatus(),
            () => `bridge-agent waiting for configuration (template); control socket ${join(DEFAULT_RUNTIME, CONTROL_SOCKET)}`,
          );
        }
        await untilShutdown();
      }),
    );

  clientCommand(program.command('status').description('the running agent: every source, stage and export with its health and endpoint'))
    .option('--json', 'print the AgentStatus object (shared/src/protocol.ts)')
    .action(
      action(async (opts: ClientOptions) => {
        const s = (await controlRequest(await socketOf(opts), { method: 'status' })) as AgentStatus;
        output(opts.json ?? false, s, () => statusText(s));
      }),
    );

  const secret = program.command('secret').description('hand secrets to the running agent (they stay in its memory)');
  clientCommand(secret.command('put').description('set the pushed secret NAME to the value read from standard input (one trailing newline dropped)'))
    .argument('<name>', 'the name used as {"pushed": NAME} in the config')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (name: string, opts: ClientOptions) => {
        const value = await readStdin();
        const res = (await controlRequest(await socketOf(opts), { method: 'putSecret', params: { name, value } })) as { changed: boolean };
        output(opts.json ?? false, res, () => `secret ${name} ${res.changed ? 'stored' : 'unchanged'}`);
      }),
    );

  const config = program.command('config').description('change settings of the running agent');
  clientCommand(config.command('set').description('set a live setting; today: cache-size SIZE (of store sources)'))
    .argument('<key>', 'cache-size')
    .argument('<value>', 'e.g. 2G')
    .option('--source <name>', 'only this store source (default: all store sources)')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (key: string, value: string, opts: ClientOptions & { source?: string }) => {
        if (key !== 'cache-size') throw new BridgeError('EINVAL', `unknown setting "${key}" (known: cache-size)`);
        const bytes = parseSize(value, 'cache-size');
        const res = (await controlRequest(await socketOf(opts), {
          method: 'setCacheSize',
          params: { bytes, ...(opts.source ? { source: opts.source } : {}) },
        })) as {
          sources: string[];
        };
        output(opts.json ?? false, res, () => `cache size ${formatSize(bytes)} set on ${res.sources.length ? res.sources.join(', ') : 'no store source'}`);
      }),
    );

  clientCommand(program.command('reload').description('re-read the config file: apply new credentials and cache sizes live'))
    .option('--json', 'print the result as JSON')
    .action(
      action(async (opts: ClientOptions) => {
        const res = (await controlRequest(await socketOf(opts), { method: 'reload' })) as { applied: string[]; restartRequired: string[] };
        output(opts.json ?? false, res, () =>
          [`applied: ${res.applied.join(', ') || 'nothing'}`, ...res.restartRequired.map((r) => `not applied: ${r}`)].join('\n'),
        );
      }),
    );

  clientCommand(program.command('stop').description('stop the running agent (like SIGTERM) and wait until it is gone'))
    .option('--json', 'print the result as JSON')
    .action(
      action(async (opts: ClientOptions) => {
        const socket = await socketOf(opts);
        const { pid } = (await controlRequest(socket, { method: 'status' })) as AgentStatus;
        await controlRequest(socket, { method: 'shutdown' });
        // Stopped once the process is gone (after unmounting everything): wait for that, bounded.
        for (let i = 0; i < 1200 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 100));
        if (pidAlive(pid)) throw new BridgeError('EBUSY', `the agent (pid ${pid}) is still stopping after 120 s`);
        output(opts.json ?? false, { stopped: true }, () => 'agent stopped');
      }),
    );
}
