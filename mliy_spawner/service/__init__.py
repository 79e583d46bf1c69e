"""The hub-managed ``mliy`` service: progress reports from instances and the instance control API."""
