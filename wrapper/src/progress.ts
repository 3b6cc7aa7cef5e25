/** Progress for long steps, on stderr: phases as lines, percentages as a cli-progress bar on a terminal. */
import cliProgress from 'cli-progress';

export interface Progress {
  phase(message: string): void;
  percent(label: string, percent: number): void;
  end(): void;
}

export const silentProgress: Progress = { phase: () => undefined, percent: () => undefined, end: () => undefined };

export class StderrProgress implements Progress {
  private bar: cliProgress.SingleBar | undefined;
  private label = '';
  private readonly started = Date.now();

  phase(message: string): void {
    this.end();
    process.stderr.write(`[${((Date.now() - this.started) / 1000).toFixed(1).padStart(5)} s] ${message}\n`);
  }

  percent(label: string, percent: number): void {
    if (!process.stderr.isTTY) {
      if (label !== this.label) this.phase(`${label} ...`);
      this.label = label;
      return;
    }
    if (!this.bar || label !== this.label) {
      this.end();
      this.label = label;
      this.bar = new cliProgress.SingleBar(
        { format: `${label} [{bar}] {percentage}%`, stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(100, 0);
    }
    this.bar.update(Math.min(100, Math.round(percent)));
  }

  end(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = undefined;
    }
  }
}
