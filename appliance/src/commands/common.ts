/** Pieces every agent command shares: the CLI helpers both CLIs use (shared/src/cli.ts). */
export { action, applyGlobalOptions, output, sizeOption, type GlobalOptions } from '../../../shared/src/cli.js';
