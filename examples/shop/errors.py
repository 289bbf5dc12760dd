"""The shop's own exceptions, named by ``policies.example.yaml``."""


class GatewayTimeout(ConnectionError):
    """The payment gateway did not answer in time; the charge was not made."""


class CardDeclined(Exception):
    """The bank refused the card: retrying will not change its mind."""


class SmtpUnavailable(ConnectionError):
    """The mail relay refused the connection."""


class ProviderRateLimited(Exception):
    """The email provider asks us to slow down."""
