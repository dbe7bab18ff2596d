/** Base of every error the project throws on purpose: a stable machine code plus a message. */
export class AppError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Invalid configuration; `issues` lists every problem found, one per line. */
export class ConfigError extends AppError {
  constructor(readonly issues: string[]) {
    super('config_invalid', `invalid configuration:\n${issues.map((i) => `  - ${i}`).join('\n')}`);
  }
}
