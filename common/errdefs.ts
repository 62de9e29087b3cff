/**
 * One error taxonomy for every layer (after moby's and containerd's errdefs). Each class carries a
 * stable `code`; the API maps classes to HTTP statuses exactly once (api/errors.ts), the agent
 * client maps gRPC statuses to these exactly once (runtime/agent-client.ts).
 */
export type ErrorCode =
  | 'NotFound'
  | 'InvalidParameter'
  | 'Conflict'
  | 'NotModified'
  | 'Unauthorized'
  | 'Forbidden'
  | 'Unavailable'
  | 'NotImplemented'
  | 'System'
  | 'Canceled'
  | 'Deadline'
  | 'DataLoss';

export abstract class CapsuleError extends Error {
  abstract readonly code: ErrorCode;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class NotFoundError extends CapsuleError {
  readonly code = 'NotFound' as const;
}
export class InvalidParameterError extends CapsuleError {
  readonly code = 'InvalidParameter' as const;
}
export class ConflictError extends CapsuleError {
  readonly code = 'Conflict' as const;
}
export class NotModifiedError extends CapsuleError {
  readonly code = 'NotModified' as const;
}
export class UnauthorizedError extends CapsuleError {
  readonly code = 'Unauthorized' as const;
}
export class ForbiddenError extends CapsuleError {
  readonly code = 'Forbidden' as const;
}
export class UnavailableError extends CapsuleError {
  readonly code = 'Unavailable' as const;
}
export class NotImplementedError extends CapsuleError {
  readonly code = 'NotImplemented' as const;
}
export class SystemError extends CapsuleError {
  readonly code = 'System' as const;
}
export class CanceledError extends CapsuleError {
  readonly code = 'Canceled' as const;
}
export class DeadlineError extends CapsuleError {
  readonly code = 'Deadline' as const;
}
export class DataLossError extends CapsuleError {
  readonly code = 'DataLoss' as const;
}

/** The taxonomy code of an error, walking its cause chain; 'System' when none is classified. */
export function errorCodeOf(err: unknown): ErrorCode {
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 16; depth++) {
    if (current instanceof CapsuleError) return current.code;
    current = (current as { cause?: unknown }).cause;
  }
  return 'System';
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
