//! Resource classes, traits and inventories, with Placement's validation rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The largest amount Placement accepts anywhere (`max_unit`'s default).
pub const MAX_AMOUNT: i64 = 2_147_483_647;

macro_rules! standard_classes {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A resource class: one of Placement's standard classes (`os-resource-classes`)
        /// or a custom class named `CUSTOM_[A-Z0-9_]+`.
        ///
        /// Ordered, hashable and cheap to clone; it prints and parses as its Placement name.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ResourceClass {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
            /// A custom class; the name includes the `CUSTOM_` prefix and has been validated.
            Custom(String),
        }

        impl ResourceClass {
            /// Every standard class, in Placement's order.
            pub const STANDARD: &'static [ResourceClass] = &[$(ResourceClass::$variant),*];

            /// The Placement name of this class.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ResourceClass::$variant => $name,)*
                    ResourceClass::Custom(s) => s,
                }
            }

            /// Parses a class name; unknown standard-looking names and malformed custom
            /// names are rejected with [`Error::InvalidInput`].
            pub fn parse(s: &str) -> Result<Self, Error> {
                match s {
                    $($name => Ok(ResourceClass::$variant),)*
                    _ if s.starts_with("CUSTOM_") => {
                        validate_custom_name("resource_class", s)?;
                        Ok(ResourceClass::Custom(s.to_string()))
                    }
                    _ => Err(Error::invalid(
                        "resource_class",
                        format!("{s:?} is neither a standard resource class nor CUSTOM_[A-Z0-9_]+"),
                    )),
                }
            }
        }
    };
}

standard_classes! {
    Vcpu => "VCPU",
    MemoryMb => "MEMORY_MB",
    DiskGb => "DISK_GB",
    PciDevice => "PCI_DEVICE",
    SriovNetVf => "SRIOV_NET_VF",
    NumaSocket => "NUMA_SOCKET",
    NumaCore => "NUMA_CORE",
    NumaThread => "NUMA_THREAD",
    NumaMemoryMb => "NUMA_MEMORY_MB",
    Ipv4Address => "IPV4_ADDRESS",
    Vgpu => "VGPU",
    VgpuDisplayHead => "VGPU_DISPLAY_HEAD",
    NetBwEgrKilobitPerSec => "NET_BW_EGR_KILOBIT_PER_SEC",
    NetBwIgrKilobitPerSec => "NET_BW_IGR_KILOBIT_PER_SEC",
    Pcpu => "PCPU",
    MemEncryptionContext => "MEM_ENCRYPTION_CONTEXT",
    Fpga => "FPGA",
    Pgpu => "PGPU",
    NetPacketRateKilopacketPerSec => "NET_PACKET_RATE_KILOPACKET_PER_SEC",
    NetPacketRateEgrKilopacketPerSec => "NET_PACKET_RATE_EGR_KILOPACKET_PER_SEC",
    NetPacketRateIgrKilopacketPerSec => "NET_PACKET_RATE_IGR_KILOPACKET_PER_SEC",
}

fn validate_custom_name(field: &str, s: &str) -> Result<(), Error> {
    let rest = &s["CUSTOM_".len()..];
    if rest.is_empty()
        || s.len() > 255
        || !rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::invalid(field, format!("{s:?} must match CUSTOM_[A-Z0-9_]+ and be at most 255 characters")));
    }
    Ok(())
}

impl fmt::Display for ResourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ResourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceClass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl Serialize for ResourceClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResourceClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ResourceClass::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Namespaces of the `os-traits` library. A trait outside them must be `CUSTOM_`.
const STANDARD_TRAIT_PREFIXES: &[&str] = &["COMPUTE_", "HW_", "STORAGE_", "MISC_", "OWNER_", "ACCELERATOR_"];

/// A trait: a qualitative property of a provider (`HW_CPU_X86_AVX2`, `CUSTOM_GOLD`).
///
/// Standard traits are recognised by the `os-traits` namespaces (`COMPUTE_`, `HW_`,
/// `STORAGE_`, `MISC_`, `OWNER_`, `ACCELERATOR_`) rather than by a copy of the full list,
/// which changes every release; any other name must be `CUSTOM_[A-Z0-9_]+`. Either way the
/// name is `[A-Z0-9_]`, at most 255 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Trait(String);

impl Trait {
    /// Validates a trait name.
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.starts_with("CUSTOM_") {
            validate_custom_name("trait", &s)?;
            return Ok(Self(s));
        }
        let well_formed = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let known_namespace = STANDARD_TRAIT_PREFIXES.iter().any(|p| s.starts_with(p) && s.len() > p.len());
        if !(well_formed && known_namespace) {
            return Err(Error::invalid(
                "trait",
                format!(
                    "{s:?} is neither a standard trait ({}) nor CUSTOM_[A-Z0-9_]+",
                    STANDARD_TRAIT_PREFIXES.join("*, ") + "*"
                ),
            ));
        }
        Ok(Self(s))
    }

    /// The trait's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Trait {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<Trait> for String {
    fn from(t: Trait) -> String {
        t.0
    }
}

impl FromStr for Trait {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl fmt::Display for Trait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Trait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The inventory of one resource class on one provider, with Placement's fields and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    /// Physical amount (at least 1).
    pub total: i64,
    /// Amount kept back for the host itself (0 ..= total).
    pub reserved: i64,
    /// Smallest amount a single allocation may take.
    pub min_unit: i64,
    /// Largest amount a single allocation may take.
    pub max_unit: i64,
    /// Every allocation must be a multiple of this.
    pub step_size: i64,
    /// Overcommit factor (> 0).
    pub allocation_ratio: f64,
}

impl Default for Inventory {
    /// Placement's `INVENTORY_DEFAULTS` with `total = 1`.
    fn default() -> Self {
        Inventory { total: 1, reserved: 0, min_unit: 1, max_unit: MAX_AMOUNT, step_size: 1, allocation_ratio: 1.0 }
    }
}

impl Inventory {
    /// An inventory of `total` with Placement's defaults for everything else.
    pub fn with_total(total: i64) -> Self {
        Inventory { total, ..Inventory::default() }
    }

    /// `floor((total - reserved) * allocation_ratio)`, Placement's capacity rule.
    pub fn capacity(&self) -> i64 {
        // Saturating and in f64: an inventory that was never validated (a hand-built one,
        // a corrupt record) gives a capacity in 0..=i64::MAX, never a panic or a wrap.
        let c = (self.total.saturating_sub(self.reserved) as f64 * self.allocation_ratio).floor();
        if c.is_finite() { c.max(0.0).min(i64::MAX as f64) as i64 } else { 0 }
    }

    /// Checks the inventory the way Placement's inventory schema and handlers do.
    /// `what` names the inventory in the error (for example `"VCPU on <provider>"`).
    pub fn validate(&self, what: &str) -> Result<(), Error> {
        let field = format!("inventory {what}");
        let bad = |m: String| Err(Error::invalid(field.clone(), m));
        if !(1..=MAX_AMOUNT).contains(&self.total) {
            return bad(format!("total {} must be between 1 and {MAX_AMOUNT}", self.total));
        }
        if self.reserved < 0 || self.reserved > self.total {
            return bad(format!("reserved {} must be between 0 and total {}", self.reserved, self.total));
        }
        if !(1..=MAX_AMOUNT).contains(&self.min_unit) {
            return bad(format!("min_unit {} must be between 1 and {MAX_AMOUNT}", self.min_unit));
        }
        if !(1..=MAX_AMOUNT).contains(&self.max_unit) || self.max_unit < self.min_unit {
            return bad(format!(
                "max_unit {} must be between min_unit {} and {MAX_AMOUNT}",
                self.max_unit, self.min_unit
            ));
        }
        if !(1..=MAX_AMOUNT).contains(&self.step_size) {
            return bad(format!("step_size {} must be between 1 and {MAX_AMOUNT}", self.step_size));
        }
        if !(self.allocation_ratio.is_finite() && self.allocation_ratio > 0.0) {
            return bad(format!("allocation_ratio {} must be a finite number above 0", self.allocation_ratio));
        }
        Ok(())
    }

    /// Checks that one allocation of `amount` is allowed by this inventory's unit rules
    /// (`min_unit <= amount <= max_unit`, `amount % step_size == 0`). Capacity is checked
    /// separately because it depends on usage.
    pub fn check_units(&self, what: &dyn std::fmt::Display, amount: i64) -> Result<(), Error> {
        if amount < self.min_unit || amount > self.max_unit {
            return Err(Error::invalid(
                format!("allocation {what}"),
                format!("amount {amount} is outside min_unit {} .. max_unit {}", self.min_unit, self.max_unit),
            ));
        }
        // Checked: a stored inventory has a step of at least 1, but this also reads
        // inventories off the wire (a Redis claim script's `units` reply), where a step of 0
        // or -1 must be an error, not a division by zero or an overflow.
        match amount.checked_rem(self.step_size) {
            Some(0) => Ok(()),
            Some(_) => Err(Error::invalid(
                format!("allocation {what}"),
                format!("amount {amount} is not a multiple of step_size {}", self.step_size),
            )),
            None => Err(Error::invalid(
                format!("inventory {what}"),
                format!("step_size {} must be between 1 and {MAX_AMOUNT}", self.step_size),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_and_reject_garbage() {
        for c in ResourceClass::STANDARD {
            assert_eq!(&ResourceClass::parse(c.as_str()).unwrap(), c);
        }
        assert_eq!(ResourceClass::parse("CUSTOM_GPU_A100").unwrap(), ResourceClass::Custom("CUSTOM_GPU_A100".into()));
        for bad in ["", "vcpu", "CUSTOM_", "CUSTOM_lower", "CUSTOM_A-B", "RAM", "CUSTOM_Ä"] {
            assert!(matches!(ResourceClass::parse(bad), Err(Error::InvalidInput { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn traits_validate() {
        assert!(Trait::new("HW_CPU_X86_AVX2").is_ok());
        assert!(Trait::new("CUSTOM_GOLD").is_ok());
        for bad in ["", "HW_", "hw_cpu", "GOLD", "CUSTOM_", "CUSTOM_a", "COMPUTE_STATUS DISABLED"] {
            assert!(Trait::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn capacity_is_floor_of_ratio() {
        let inv = Inventory { total: 10, reserved: 3, allocation_ratio: 1.5, ..Inventory::default() };
        assert_eq!(inv.capacity(), 10); // floor(7 * 1.5) = floor(10.5)
        let inv = Inventory { total: 4, reserved: 4, ..Inventory::default() };
        assert_eq!(inv.capacity(), 0);
    }

    #[test]
    fn inventory_validation() {
        assert!(Inventory::with_total(1).validate("x").is_ok());
        let bad = [
            Inventory::with_total(0),
            Inventory { reserved: 2, ..Inventory::with_total(1) },
            Inventory { reserved: -1, ..Inventory::with_total(1) },
            Inventory { min_unit: 0, ..Inventory::with_total(1) },
            Inventory { min_unit: 5, max_unit: 4, ..Inventory::with_total(8) },
            Inventory { step_size: 0, ..Inventory::with_total(1) },
            Inventory { allocation_ratio: 0.0, ..Inventory::with_total(1) },
            Inventory { allocation_ratio: f64::NAN, ..Inventory::with_total(1) },
        ];
        for inv in bad {
            assert!(inv.validate("x").is_err(), "{inv:?} accepted");
        }
    }

    #[test]
    fn units() {
        let inv = Inventory { min_unit: 2, max_unit: 8, step_size: 2, ..Inventory::with_total(16) };
        assert!(inv.check_units(&"x", 4).is_ok());
        assert!(inv.check_units(&"x", 3).is_err());
        assert!(inv.check_units(&"x", 10).is_err());
        assert!(inv.check_units(&"x", 0).is_err());
    }

    /// Allocation ratios up to Placement's float maximum and unvalidated inventories give a
    /// capacity in `0..=i64::MAX`, and the usage arithmetic on top saturates.
    #[test]
    fn huge_ratios_and_usages_do_not_overflow() {
        let inv = Inventory { total: MAX_AMOUNT, allocation_ratio: 3.40282e38, ..Inventory::default() };
        assert!(inv.validate("VCPU").is_ok());
        assert_eq!(inv.capacity(), i64::MAX);
        let odd = Inventory { total: i64::MIN, reserved: i64::MAX, ..Inventory::default() };
        assert_eq!(odd.capacity(), 0);
        let mut node = crate::model::ProviderNode {
            id: crate::model::ProviderId::new_v4(),
            name: "n".into(),
            parent: None,
            traits: Default::default(),
            aggregates: Default::default(),
            inventories: Default::default(),
            usages: Default::default(),
        };
        node.inventories.insert(ResourceClass::Vcpu, inv);
        node.usages.insert(ResourceClass::Vcpu, i64::MAX - 1);
        assert_eq!(node.free(&ResourceClass::Vcpu), Some(1));
        node.inventories.insert(ResourceClass::Vcpu, Inventory::with_total(1));
        assert_eq!(node.free(&ResourceClass::Vcpu), Some(1 - (i64::MAX - 1)));
        node.usages.insert(ResourceClass::Vcpu, -5);
        node.inventories.insert(ResourceClass::Vcpu, Inventory { allocation_ratio: 3.40282e38, ..inv });
        assert_eq!(node.free(&ResourceClass::Vcpu), Some(i64::MAX));
    }
}
