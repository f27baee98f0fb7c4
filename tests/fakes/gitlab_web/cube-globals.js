// @cubejs-client/core's browser build (UMD) reads its dependencies from these globals; each is set from that
// package's own browser build (loaded before this file), except uuid, whose v11 ships no browser global:
// its one use here, v4(), is the browser's own crypto.randomUUID (a v4 UUID).
window.uuid = { v4: () => window.crypto.randomUUID() };
window.ramda = window.R;
window.quarterOfYear = window.dayjs_plugin_quarterOfYear;
window.duration = window.dayjs_plugin_duration;
window.isoWeek = window.dayjs_plugin_isoWeek;
window.en = window.dayjs_locale_en;
