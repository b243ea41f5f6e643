//! Enabling and disabling Message Carbons for a session (XEP-0280 §4, §5).

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::ns;

use super::iq_result;
use crate::router::Router;
use crate::routing::SessionAddr;

impl Router {
    /// `<enable/>` or `<disable/>` carbons for a session.
    pub(in crate::router) fn carbons_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        enable: bool,
    ) {
        if let Some(r) = self.table.route_mut(addr.0, addr.1) {
            r.carbons = enable;
        }
        self.deliver(addr, Bytes::from(iq_result(header).to_bytes(ns::CLIENT)));
    }
}
