import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'appliance/src/**/*.test.ts', 'shared/src/**/*.test.ts', 'wrapper/src/**/*.test.ts'],
    // Tests start real servers, FUSE mounts and VMs: run files one at a time to keep ports and
    // loop devices apart and the 2-core machine responsive.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
