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


class StoreUnavailable(DomainError):
    """A store (MongoDB or Redis) did not answer in time."""

    code = "store_unavailable"


class TooMany(DomainError):
    """A limit on concurrent use was reached; trying again later may succeed."""

    code = "too_many"
    retry_after = 5
