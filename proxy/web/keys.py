"""Typed application and request state keys of the aiohttp adapter."""

from __future__ import annotations

from aiohttp import web

from proxy.pipeline.core import Pipeline
from proxy.pipeline.exchange import Exchange

#: the pipeline both front doors call; its services are the app's state
PIPELINE = web.AppKey("pipeline", Pipeline)
#: the request's record, made by the request-id middleware
EXCHANGE = web.RequestKey("exchange", Exchange)
