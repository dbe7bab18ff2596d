import { AppError } from '../errors/app-error.js';
import { commandStatusName } from './pdu.js';

/** An SMPP operation answered with a non-zero command_status (SMPP 3.4 §5.1.3), e.g. a refused bind. */
export class SmppError extends AppError {
  readonly statusName: string;

  constructor(
    readonly commandStatus: number,
    operation: string,
  ) {
    const statusName = commandStatusName(commandStatus);
    super('smpp_error', `${operation} answered ${statusName} (0x${commandStatus.toString(16)})`);
    this.statusName = statusName;
  }
}
