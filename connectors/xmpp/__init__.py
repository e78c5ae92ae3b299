"""XMPP connector: an XEP-0114 component that puppets Matrix users, plus optional logins with
users' own XMPP accounts. See connector.py for the portal keys and jid_mapping.py for the
address mapping."""

from .connector import XMPPClient, XMPPConnector

__all__ = ["XMPPClient", "XMPPConnector"]
