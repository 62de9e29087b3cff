/**
 * The agent's errors, by kind. server.ts maps each kind to a gRPC status exactly once; the host's
 * agent client maps the status to common/errdefs. `exitCode` travels as the `capsule-exit-code`
 * trailer: the State.ExitCode Docker records when a container fails to start.
 */
export type AgentErrorKind =
  | 'InvalidArgument'
  | 'NotFound'
  | 'AlreadyExists'
  /** The request is well-formed but the container's configuration cannot run (Docker's 400). */
  | 'FailedPrecondition'
  /** The container's configuration failed in a way dockerd reports as a system error (500). */
  | 'Unknown'
  | 'Internal';

export class AgentError extends Error {
  constructor(
    readonly kind: AgentErrorKind,
    message: string,
    readonly exitCode?: number,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}
