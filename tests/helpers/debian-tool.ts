/**
 * Debian tools some tests need (chromium, strace, shellcheck): present, or the test skips with a notice
 * outside CI; in CI (`MULTILORA_CI`, set by .ci/run, which installs them) a missing tool is an error.
 */
import { spawnSync } from "node:child_process";

/** Whether `command versionFlag` runs; `what` names the skipped test in the notice. */
export function haveDebianTool(command: string, versionFlag: string, what: string): boolean {
  if (spawnSync(command, [versionFlag]).status === 0) return true;
  if (process.env.MULTILORA_CI)
    throw new Error(`${command} is missing in CI: .ci/run should have installed it`);
  console.warn(`notice: ${command} is not installed (apt-get install ${command}); ${what} is skipped`);
  return false;
}
