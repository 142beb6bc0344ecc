"""twistd plugin: ``twistd -n mailserver --config FILE`` runs the mail server."""

from __future__ import annotations

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Configuration file (default: the embedded default configuration)."],
    ]

    def postOptions(self) -> None:
        from mailserver.config import ConfigError, load_config

        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as error:
            for problem in error.problems:
                print(problem, file=sys.stderr)
            sys.exit(1)


@implementer(IServiceMaker, IPlugin)
class MailServerMaker:
    tapname = "mailserver"
    description = "A mail server for your own domain: SMTP receiving into Maildir."
    options = Options

    def makeService(self, options: Options):  # type: ignore[no-untyped-def]
        from twisted.internet import reactor

        from mailserver.service import make_service

        return make_service(options["loaded"], reactor)


serviceMaker = MailServerMaker()
