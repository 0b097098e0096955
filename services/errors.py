"""Domain errors raised by the services; handlers map them to HTTP statuses."""


class DomainError(Exception):
    """Base of the errors a caller can act on; the message is safe to show to clients."""

    code = "error"


class Invalid(DomainError):
    """The input breaks a rule of the domain (a field's type, length or format)."""

    code = "invalid"


class NotFound(DomainError):
    """The thing asked for does not exist, or belongs to someone else."""

    code = "not_found"


class Unauthorized(DomainError):
    """The credentials are missing, malformed, expired or forged."""

    code = "unauthorized"


class Forbidden(DomainError):
    """The credentials are valid but do not allow this action."""

    code = "forbidden"


class Conflict(DomainError):
    """The request contradicts one made before: an Idempotency-Key reused for a different request."""

    code = "conflict"


class StoreUnavailable(DomainError):
    """A store (MongoDB or Redis) did not answer in time."""

    code = "store_unavailable"


class TooMany(DomainError):
    """A limit on concurrent use was reached; trying again later may succeed."""

    code = "too_many"
    retry_after = 5


class RateLimited(TooMany):
    """A producer sent more than its rate limit allows; `retry_after` seconds from now it may send again."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
