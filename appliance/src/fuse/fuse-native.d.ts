// Minimal types for fuse-native 2.2 (the package ships none). Callbacks take a negative errno on
// failure; read/write callbacks take the byte count.
declare module 'fuse-native' {
  export interface Stat {
    mtime: Date;
    atime: Date;
    ctime: Date;
    size: number;
    mode: number;
    uid: number;
    gid: number;
    nlink?: number;
    blocks?: number;
    blksize?: number;
  }
  type Cb = (err: number) => void;
  export interface Ops {
    init?(cb: Cb): void;
    readdir?(path: string, cb: (err: number, names?: string[], stats?: Stat[]) => void): void;
    getattr?(path: string, cb: (err: number, stat?: Stat) => void): void;
    fgetattr?(path: string, fd: number, cb: (err: number, stat?: Stat) => void): void;
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void;
    release?(path: string, fd: number, cb: Cb): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void): void;
    flush?(path: string, fd: number, cb: Cb): void;
    fsync?(path: string, datasync: boolean, fd: number, cb: Cb): void;
    truncate?(path: string, size: number, cb: Cb): void;
    ftruncate?(path: string, fd: number, size: number, cb: Cb): void;
    statfs?(path: string, cb: (err: number, st?: Record<string, number>) => void): void;
    access?(path: string, mode: number, cb: Cb): void;
    utimens?(path: string, atime: number, mtime: number, cb: Cb): void;
    chmod?(path: string, mode: number, cb: Cb): void;
  }
  export interface Options {
    force?: boolean;
    mkdir?: boolean;
    allowOther?: boolean;
    fsname?: string;
    maxRead?: number;
    kernelCache?: boolean;
    attrTimeout?: number;
    entryTimeout?: number;
    timeout?: number | false;
    debug?: boolean;
  }
  export default class Fuse {
    constructor(mnt: string, ops: Ops, opts?: Options);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static ENOENT: number;
    static EIO: number;
    static EROFS: number;
    static EPERM: number;
    static EINVAL: number;
  }
}
