/**
 * The agent's configuration: sources → stages → exports. One JSON document, validated here for both
 * sides (the host wrapper writes it to the config drive, the agent reads it). Secrets never appear
 * inline: every password, CHAP secret or passphrase is a reference to a file or environment variable
 * (or, in the appliance, to a secret pushed over SSH into memory). See docs/config.md.
 */
import { z } from 'zod';
import { BridgeError } from './errors.js';
import { parseSize } from './size.js';

const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'a name of letters, digits, "_", "." or "-" (at most 63), starting with a letter or digit');

/** A size given as bytes (number) or text such as "128K", "1G". */
const size = z.union([z.number(), z.string()]).transform((v, ctx) => {
  try {
    return parseSize(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

/** Where a secret comes from. Inline strings are refused on purpose. */
export const secretRef = z.union(
  [
    z.object({ file: z.string().min(1) }).strict(),
    z.object({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/) }).strict(),
    z.object({ pushed: name }).strict(),
  ],
  { error: 'a secret reference: {"file": PATH}, {"env": NAME} or {"pushed": NAME} (secrets are never written inline)' },
);
export type SecretRef = z.infer<typeof secretRef>;

const storeCache = z
  .object({
    dir: z.string().optional(),
    size: size.default(parseSize('256M')),
    memory: size.default(parseSize('32M')),
  })
  .strict();

export const sourceSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('directory'), name, path: z.string().min(1), readOnly: z.boolean().default(false) }).strict(),
  z
    .object({
      kind: z.literal('disk'),
      name,
      /** A block device or an image file. */
      path: z.string().min(1),
      /** Partition number (1-based), "auto" (the first with a filesystem) or "whole". */
      partition: z.union([z.number().int().min(1), z.literal('auto'), z.literal('whole')]).default('auto'),
      fstype: z.string().default('auto'),
      readOnly: z.boolean().default(false),
      /** The whole disk as a block device (an iSCSI LUN, or what a mount stage mounts): no kernel mount here. */
      raw: z.boolean().default(false),
    })
    .strict(),
  z.object({ kind: z.literal('memory'), name, size }).strict(),
  z.object({ kind: z.literal('file'), name, path: z.string().min(1), size: size.optional(), readOnly: z.boolean().default(false) }).strict(),
  z
    .object({
      kind: z.literal('store'),
      name,
      /** `dir:PATH` or `s3://BUCKET/PREFIX`. */
      store: z.string().regex(/^(dir:.+|s3:\/\/[^/]+(\/.*)?)$/, 'dir:PATH or s3://BUCKET/PREFIX'),
      endpoint: z.string().url().optional(),
      region: z.string().optional(),
      passphrase: secretRef.optional(),
      /** S3 access keys; without them the AWS SDK's own chain (environment, profile) applies. */
      accessKeyId: secretRef.optional(),
      secretAccessKey: secretRef.optional(),
      cache: storeCache.default({ size: parseSize('256M'), memory: parseSize('32M') }),
      readOnly: z.boolean().default(false),
    })
    .strict(),
]);
export type SourceConfig = z.infer<typeof sourceSchema>;

export const stageSchema = z.discriminatedUnion('kind', [
  /** block → tree: the kernel mounts the filesystem on a block device (loop device over its FUSE file). */
  z.object({ kind: z.literal('mount'), name, from: name, fstype: z.string().default('auto'), readOnly: z.boolean().default(false) }).strict(),
  /** tree → block: a FAT32-on-MBR volume synthesized from a tree. */
  z
    .object({
      kind: z.literal('fat32'),
      name,
      from: name,
      size: size.optional(),
      label: z.string().max(11).optional(),
      readOnly: z.boolean().default(false),
    })
    .strict(),
]);
export type StageConfig = z.infer<typeof stageSchema>;

const hosts = z.array(z.string().min(1)).min(1);

export const exportSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('smb'),
      name,
      from: name,
      readOnly: z.boolean().default(false),
      users: z.array(name).min(1, 'at least one user: exports need credentials'),
      hostsAllow: hosts.optional(),
    })
    .strict(),
  z
    .object({
      kind: z.literal('nfs'),
      name,
      from: name,
      readOnly: z.boolean().default(false),
      clients: hosts,
      squash: z.enum(['root', 'all', 'none']).default('root'),
    })
    .strict(),
  z
    .object({
      kind: z.literal('iscsi'),
      name,
      from: name,
      iqn: z
        .string()
        .regex(/^iqn\.\d{4}-\d{2}\.[^\s]+$/, 'an iSCSI qualified name such as iqn.2026-11.org.bridge:disk')
        .optional(),
      readOnly: z.boolean().default(false),
      chap: z.object({ user: name, secret: secretRef }).strict(),
      mutualChap: z.object({ user: name, secret: secretRef }).strict().optional(),
      initiators: z.array(z.string().min(1)).optional(),
    })
    .strict(),
]);
export type ExportConfig = z.infer<typeof exportSchema>;

export const userSchema = z.object({ name, password: secretRef }).strict();

const port = z.number().int().min(1).max(65535);

export const agentConfigSchema = z
  .object({
    version: z.literal(1),
    /** Private directory for rendered server configs, sockets and pid files (mode 0700). */
    runtimeDir: z.string().default('/run/bridge'),
    log: z
      .object({ level: z.enum(['debug', 'info', 'warn', 'error']).default('info'), json: z.boolean().default(false) })
      .strict()
      .default({ level: 'info', json: false }),
    listen: z
      .object({
        address: z.string().default('127.0.0.1'),
        smbPort: port.default(445),
        nfsPort: port.default(2049),
        /** NFSv3's MOUNT protocol (offered when rpcbind is available); 20048 when absent. */
        nfsMountPort: port.optional(),
        iscsiPort: port.default(3260),
      })
      .strict()
      .default({ address: '127.0.0.1', smbPort: 445, nfsPort: 2049, iscsiPort: 3260 }),
    users: z.array(userSchema).default([]),
    sources: z.array(sourceSchema).min(1, 'at least one source'),
    stages: z.array(stageSchema).default([]),
    exports: z.array(exportSchema).default([]),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    // Every name is unique across sources and stages, and every `from` names an earlier value.
    const seen = new Map<string, string>();
    const defined = (n: string, where: (string | number)[]): void => {
      if (seen.has(n)) ctx.addIssue({ code: 'custom', path: [...where, 'name'], message: `name "${n}" is already used by ${seen.get(n)}` });
      seen.set(n, where.join('.'));
    };
    cfg.sources.forEach((s, i) => defined(s.name, ['sources', i]));
    cfg.stages.forEach((s, i) => {
      if (!seen.has(s.from)) ctx.addIssue({ code: 'custom', path: ['stages', i, 'from'], message: `no source or earlier stage is named "${s.from}"` });
      defined(s.name, ['stages', i]);
    });
    const users = new Set(cfg.users.map((u) => u.name));
    cfg.exports.forEach((e, i) => {
      if (!seen.has(e.from)) ctx.addIssue({ code: 'custom', path: ['exports', i, 'from'], message: `no source or stage is named "${e.from}"` });
      if (e.kind === 'smb')
        e.users.forEach((u, j) => {
          if (!users.has(u)) ctx.addIssue({ code: 'custom', path: ['exports', i, 'users', j], message: `user "${u}" is not defined in "users"` });
        });
    });
  });

export type AgentConfig = z.infer<typeof agentConfigSchema>;
export type AgentConfigInput = z.input<typeof agentConfigSchema>;

/** Validates a parsed config; errors name the field path and what was expected. */
export function parseAgentConfig(raw: unknown, origin = 'config'): AgentConfig {
  const result = agentConfigSchema.safeParse(raw);
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => `${origin}: ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`);
  throw new BridgeError('CONFIG', problems.join('\n'), { problems });
}
