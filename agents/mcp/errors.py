"""The errors of calling MCP tools; each says whether trying again later may help (``transient``)."""

from __future__ import annotations

from runtime.errors import SopflowError


class McpError(SopflowError):
    """Root of the MCP data-source errors.

    Attributes:
        transient: Trying again later may succeed (the failure handler may retry the step).
    """

    transient: bool = False


class McpUnavailable(McpError):
    """The source could not be reached or did not answer (connection refused, timeout, server gone),
    and the pool's own retries are used up."""

    transient = True


class McpBreakerOpen(McpError):
    """The source's circuit breaker is open: the call failed fast without reaching the server."""

    transient = True


class McpSourceError(McpError):
    """The source is declared wrongly (its command does not exist, a header is not text): fix the SOP."""


class McpToolError(McpError):
    """The tool answered with an error (``isError``) or the server refused the request."""


class McpOutputInvalid(McpError):
    """The tool's answer does not match the output schema it declares."""


class McpNotAllowed(McpError):
    """The tool is not among those the SOP allows for this source: the call was refused, never sent."""


class McpResultTooLarge(McpError):
    """The tool's answer is larger than the pool accepts (``max_result_bytes``)."""
