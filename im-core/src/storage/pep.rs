//! What storage keeps of personal eventing (XEP-0163): each user's nodes
//! with their configuration, and the items published to them, newest last.
//! Both backends implement the same calls on [`super::Store`].

use bytes::Bytes;

use super::StorageError;

/// Most nodes one user keeps.
pub const MAX_PEP_NODES: i64 = 256;
/// Most items one node keeps (`pubsub#max_items` of `max`).
pub const MAX_PEP_ITEMS: u32 = 256;
/// Most bytes of items one user keeps, all nodes together.
pub const MAX_PEP_BYTES: i64 = 16 * 1024 * 1024;

/// Who may read a node's items and get its notifications
/// (`pubsub#access_model`, XEP-0060 §4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PepAccess {
    /// Anyone.
    Open,
    /// The owner and contacts subscribed to the owner's presence (the
    /// default for PEP, XEP-0163 §4.2).
    #[default]
    Presence,
    /// The owner only (no whitelist entries can be added).
    Whitelist,
}

impl PepAccess {
    /// The model's name in data forms and in storage.
    pub fn name(self) -> &'static str {
        match self {
            PepAccess::Open => "open",
            PepAccess::Presence => "presence",
            PepAccess::Whitelist => "whitelist",
        }
    }

    /// The model of `name`, if served (`roster` and `authorize` are not).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "open" => Some(PepAccess::Open),
            "presence" => Some(PepAccess::Presence),
            "whitelist" => Some(PepAccess::Whitelist),
            _ => None,
        }
    }

    /// The model as stored (an unknown name reads as the closest one).
    pub(crate) fn stored(name: &str) -> Self {
        Self::parse(name).unwrap_or(PepAccess::Whitelist)
    }
}

/// A node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PepConfig {
    /// Who may read and be notified.
    pub access: PepAccess,
    /// How many items it keeps (1 to [`MAX_PEP_ITEMS`]).
    pub max_items: u32,
}

impl Default for PepConfig {
    fn default() -> Self {
        Self {
            access: PepAccess::Presence,
            max_items: 1,
        }
    }
}

/// Configuration fields a publish's options (preconditions) or a
/// configure request names; unnamed ones keep their value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PepOptions {
    /// `pubsub#access_model`.
    pub access: Option<PepAccess>,
    /// `pubsub#max_items`.
    pub max_items: Option<u32>,
}

impl PepOptions {
    /// `config` with these fields applied.
    pub fn applied_to(&self, config: PepConfig) -> PepConfig {
        PepConfig {
            access: self.access.unwrap_or(config.access),
            max_items: self.max_items.unwrap_or(config.max_items),
        }
    }

    /// Whether `config` already has every field named here (a publish
    /// precondition holds).
    pub fn met_by(&self, config: PepConfig) -> bool {
        self.applied_to(config) == config
    }
}

/// One published item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    /// Its id (unique in its node).
    pub id: String,
    /// Its payload: the `<item/>`'s child element, as the core wrote it.
    pub payload: Bytes,
}

/// The newest item of one user's node (see [`super::Store::pep_last_items`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepLastItem {
    /// The owner (local part).
    pub owner: String,
    /// The node.
    pub node: String,
    /// The node's configuration.
    pub config: PepConfig,
    /// The item.
    pub item: PepItem,
}

/// Outcome of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PepPublished {
    /// Stored; the node has this configuration.
    Published(PepConfig),
    /// The node exists with a configuration the publish's options do not
    /// match: nothing was stored.
    PreconditionNotMet,
    /// The user does not exist.
    NoSuchUser,
}

/// Outcome of creating or configuring a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PepConfigured {
    /// Done; the node has this configuration now.
    Done(PepConfig),
    /// There is no such node to configure.
    NoSuchNode,
    /// The node to create exists already.
    Exists,
    /// The user does not exist.
    NoSuchUser,
}

/// The table operations a backend provides; the calls of
/// [`super::Store`] are built from them here, once for both backends.
pub(super) trait PepTables {
    /// Whether the account exists.
    fn account_exists(&mut self, user: &str) -> Result<bool, StorageError>;
    /// A node's configuration, if it exists.
    fn node(&mut self, user: &str, node: &str) -> Result<Option<PepConfig>, StorageError>;
    /// How many nodes the user keeps.
    fn node_count(&mut self, user: &str) -> Result<i64, StorageError>;
    /// Creates or reconfigures a node.
    fn put_node(&mut self, user: &str, node: &str, config: PepConfig) -> Result<(), StorageError>;
    /// Removes a node and its items.
    fn drop_node(&mut self, user: &str, node: &str) -> Result<(), StorageError>;
    /// Bytes of the user's items outside `node`, and of the newest
    /// `newest` items of `node` but item `id` (what stays besides `id`
    /// once it is published and the node trimmed).
    fn bytes_kept(
        &mut self,
        user: &str,
        node: &str,
        id: &str,
        newest: u32,
    ) -> Result<i64, StorageError>;
    /// Stores an item as the node's newest (replacing one of its id).
    fn put_item(&mut self, user: &str, node: &str, item: &PepItem) -> Result<(), StorageError>;
    /// Removes an item; whether it was there.
    fn drop_item(&mut self, user: &str, node: &str, id: &str) -> Result<bool, StorageError>;
    /// Removes all but the newest `keep` items.
    fn trim(&mut self, user: &str, node: &str, keep: u32) -> Result<(), StorageError>;
    /// The items of `ids` (those that exist), or else the newest `max`;
    /// oldest first either way.
    fn items(
        &mut self,
        user: &str,
        node: &str,
        ids: &[String],
        max: u32,
    ) -> Result<Vec<PepItem>, StorageError>;
}

/// See [`super::Store::pep_publish`].
pub(super) fn publish(
    db: &mut impl PepTables,
    user: &str,
    node: &str,
    item: &PepItem,
    options: &PepOptions,
) -> Result<PepPublished, StorageError> {
    if !db.account_exists(user)? {
        return Ok(PepPublished::NoSuchUser);
    }
    let config = match db.node(user, node)? {
        Some(config) if !options.met_by(config) => return Ok(PepPublished::PreconditionNotMet),
        Some(config) => config,
        None => {
            if db.node_count(user)? >= MAX_PEP_NODES {
                return Err(StorageError::QuotaExceeded);
            }
            let config = options.applied_to(PepConfig::default());
            db.put_node(user, node, config)?;
            config
        }
    };
    let used = db.bytes_kept(user, node, &item.id, config.max_items.saturating_sub(1))?;
    if used + item.payload.len() as i64 > MAX_PEP_BYTES {
        return Err(StorageError::QuotaExceeded);
    }
    db.put_item(user, node, item)?;
    db.trim(user, node, config.max_items)?;
    Ok(PepPublished::Published(config))
}

/// See [`super::Store::pep_configure`].
pub(super) fn configure(
    db: &mut impl PepTables,
    user: &str,
    node: &str,
    options: &PepOptions,
    create: bool,
) -> Result<PepConfigured, StorageError> {
    if !db.account_exists(user)? {
        return Ok(PepConfigured::NoSuchUser);
    }
    let config = match (db.node(user, node)?, create) {
        (Some(_), true) => return Ok(PepConfigured::Exists),
        (None, false) => return Ok(PepConfigured::NoSuchNode),
        (Some(config), false) => options.applied_to(config),
        (None, true) => {
            if db.node_count(user)? >= MAX_PEP_NODES {
                return Err(StorageError::QuotaExceeded);
            }
            options.applied_to(PepConfig::default())
        }
    };
    db.put_node(user, node, config)?;
    db.trim(user, node, config.max_items)?;
    Ok(PepConfigured::Done(config))
}

/// See [`super::Store::pep_items`].
pub(super) fn items(
    db: &mut impl PepTables,
    user: &str,
    node: &str,
    ids: &[String],
    max: Option<u32>,
) -> Result<Option<(PepConfig, Vec<PepItem>)>, StorageError> {
    let Some(config) = db.node(user, node)? else {
        return Ok(None);
    };
    let max = max.unwrap_or(MAX_PEP_ITEMS).min(MAX_PEP_ITEMS);
    Ok(Some((config, db.items(user, node, ids, max)?)))
}

/// See [`super::Store::pep_retract`].
pub(super) fn retract(
    db: &mut impl PepTables,
    user: &str,
    node: &str,
    id: &str,
) -> Result<Option<PepConfig>, StorageError> {
    let Some(config) = db.node(user, node)? else {
        return Ok(None);
    };
    Ok(db.drop_item(user, node, id)?.then_some(config))
}

/// See [`super::Store::pep_delete`].
pub(super) fn delete(
    db: &mut impl PepTables,
    user: &str,
    node: &str,
) -> Result<Option<PepConfig>, StorageError> {
    let Some(config) = db.node(user, node)? else {
        return Ok(None);
    };
    db.drop_node(user, node)?;
    Ok(Some(config))
}

/// The calls of [`super::Store`] built here, for a backend's `impl Store`
/// (the same five delegations in both).
macro_rules! store_calls {
    () => {
        fn pep_publish(
            &mut self,
            username: &str,
            node: &str,
            item: &$crate::storage::PepItem,
            options: &$crate::storage::PepOptions,
        ) -> Result<$crate::storage::PepPublished, $crate::storage::StorageError> {
            $crate::storage::pep::publish(self, username, node, item, options)
        }

        fn pep_configure(
            &mut self,
            username: &str,
            node: &str,
            options: &$crate::storage::PepOptions,
            create: bool,
        ) -> Result<$crate::storage::PepConfigured, $crate::storage::StorageError> {
            $crate::storage::pep::configure(self, username, node, options, create)
        }

        fn pep_items(
            &mut self,
            username: &str,
            node: &str,
            ids: &[String],
            max: Option<u32>,
        ) -> Result<
            Option<($crate::storage::PepConfig, Vec<$crate::storage::PepItem>)>,
            $crate::storage::StorageError,
        > {
            $crate::storage::pep::items(self, username, node, ids, max)
        }

        fn pep_retract(
            &mut self,
            username: &str,
            node: &str,
            id: &str,
        ) -> Result<Option<$crate::storage::PepConfig>, $crate::storage::StorageError> {
            $crate::storage::pep::retract(self, username, node, id)
        }

        fn pep_delete(
            &mut self,
            username: &str,
            node: &str,
        ) -> Result<Option<$crate::storage::PepConfig>, $crate::storage::StorageError> {
            $crate::storage::pep::delete(self, username, node)
        }
    };
}
pub(super) use store_calls;
