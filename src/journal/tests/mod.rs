//! Behaviour tests of the journal against real sled databases and record logs in temporary
//! folders, by topic (as vector's disk buffer splits its tests). Every helper they share is in
//! `helpers`; the unit tests of single files stay beside their code.

mod helpers;

mod basic;
mod initialization;
mod invariants;
mod known_errors;
mod salvage;
mod size_limits;
