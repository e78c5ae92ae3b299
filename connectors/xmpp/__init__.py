"""XMPP connector: an XEP-0114 component that puppets Matrix users, plus optional logins with
users' own XMPP accounts.

Where things happen:

* connector.py: the connector contract (portals, ghosts, logins, lifecycle, disco and caps)
  and the wiring of the parts below (part.py: their common base); the portal keys are
  described there.
* Matrix -> XMPP: messages_out.py decides what to send, matrix_to_xmpp.py builds the stanzas,
  styling.py turns Matrix HTML into XEP-0393 styling, media.py fetches media to re-upload.
* XMPP -> Matrix: messages_in.py and presence_in.py read stanzas, xmpp_to_matrix.py parses
  them into content and ids, history.py reads MUC archives (XEP-0313).
* moderation.py: deleting others' messages in a MUC (XEP-0425) both ways: the request in the
  version the room offers, its refusals, and the room's announcements.
* MUC membership: joins.py (joins, nick conflicts, self-ping), muc.py (rooms, occupants, power).
* profiles.py and avatars.py: nicks and avatars both ways (vCard, XEP-0153); pep.py: avatars
  over PEP (XEP-0084).
* component.py: the streams (component and logins), reconnects, and the cheap first look at
  incoming bytes; identity.py: who speaks (puppet JID or own account).
* jid_mapping.py: Matrix user id <-> JID; idmap.py: message id mapping (XEP-0359).
* roster.py: the puppets' presence subscriptions (RFC 6121), kept in the database; it answers
  subscription requests and probes for the component, and asks when a DM is opened.
"""

from .connector import XMPPClient, XMPPConnector

__all__ = ["XMPPClient", "XMPPConnector"]
