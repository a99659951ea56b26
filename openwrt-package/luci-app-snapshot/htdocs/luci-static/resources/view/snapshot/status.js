'use strict';
'require view';
'require rpc';
'require ui';
'require poll';

/*
 * System -> Snapshots: the chain of saved states on the overlay partition, what each one
 * changed, and the actions of the `snapshot` command over its ubus object (the snapshot
 * package's rpcd plugin). Every reply is what `snapshot COMMAND --json` prints; an error is
 * a reply `{error, code}` carrying the command's own one-line message, which is shown as it
 * is. Long actions (save, snapshot, squash, repair, upgrade) run as background jobs: the
 * reply names the job, and `status` gives its progress line, then its result.
 *
 * A login whose ACL grants luci-app-snapshot read-only sees everything and no action
 * buttons; rpcd refuses its write calls anyway.
 */

const callList = rpc.declare({ object: 'snapshot', method: 'list' });
const callStatus = rpc.declare({ object: 'snapshot', method: 'status' });
const callShow = rpc.declare({ object: 'snapshot', method: 'show', params: [ 'index', 'uci' ] });
const callCheck = rpc.declare({ object: 'snapshot', method: 'check' });
const callSave = rpc.declare({ object: 'snapshot', method: 'save', params: [ 'trial' ] });
const callPush = rpc.declare({ object: 'snapshot', method: 'push', params: [ 'message', 'trial' ] });
const callConfirm = rpc.declare({ object: 'snapshot', method: 'confirm' });
const callRollback = rpc.declare({ object: 'snapshot', method: 'rollback', params: [ 'to' ] });
const callSquash = rpc.declare({ object: 'snapshot', method: 'squash' });
const callRepair = rpc.declare({ object: 'snapshot', method: 'repair' });
const callUpgrade = rpc.declare({ object: 'snapshot', method: 'upgrade', params: [ 'dry_run', 'no_reboot' ] });
const callReboot = rpc.declare({ object: 'system', method: 'reboot' });

/* A reply, or an Error carrying the tool's own message. */
function answered(reply) {
	if (reply == null || typeof(reply) != 'object')
		throw new Error(_('No answer from the snapshot plugin'));
	if (reply.error != null)
		throw new Error(String(reply.error));
	return reply;
}

function failed(err) {
	ui.addNotification(null, E('p', { 'class': 'snapshot-error' }, [ err.message || String(err) ]), 'error');
}

function when(seconds) {
	const d = new Date(seconds * 1000);
	return '%04d-%02d-%02d %02d:%02d:%02d'.format(d.getFullYear(), d.getMonth() + 1, d.getDate(),
		d.getHours(), d.getMinutes(), d.getSeconds());
}

function size(bytes) {
	return '%1024.2mB'.format(bytes);
}

function state(record) {
	let text;
	if (record.state == 'trial')
		text = _('on trial, boot %d of %d').format(record.attempts, record.max_attempts);
	else if (record.state == 'failed')
		text = _('failed');
	else
		text = _('confirmed');
	if (String(record.integrity).indexOf('damaged') == 0)
		text += ', ' + record.integrity;
	return text;
}

/* A uci value as uci shows it: quoted, a list as its quoted items. */
function uciValue(option, value) {
	if (option.split('.').length == 2)
		return _('section %s').format(value);
	return (Array.isArray(value) ? value : [ value ]).map(v => "'" + v + "'").join(' ');
}

function uciChange(change) {
	if (change.old == null)
		return _('added %s').format(uciValue(change.option, change.new));
	if (change.new == null)
		return _('removed (was %s)').format(uciValue(change.option, change.old));
	return '%s → %s'.format(uciValue(change.option, change.old), uciValue(change.option, change.new));
}

return view.extend({
	/* A call rpcd or uhttpd refused (a timeout, a denied ACL) becomes an error reply: LuCI
	 * would show a rejected load() with its stack trace. */
	load() {
		const reply = call => call().catch(err => ({ error: err.message || String(err) }));
		return Promise.all([ reply(callList), reply(callStatus) ]);
	},

	/* Start a background job; once it is done, `done(result)`, then reload the page. */
	runJob(started, title, done) {
		const line = E('p', { 'class': 'snapshot-progress' }, [ _('Starting…') ]);
		ui.showModal(title, [ line, E('div', { 'class': 'spinning' }, [ _('Working…') ]) ]);
		return started.then(answered).then(reply => {
			const job = reply.job;
			const watch = () => callStatus().then(answered).then(status => {
				const current = status.job;
				if (current == null || current.id != job)
					return;
				if (current.state == 'running') {
					line.textContent = current.progress || _('Running…');
					return;
				}
				poll.remove(watch);
				ui.hideModal();
				const result = current.result || {};
				if (current.state != 'done')
					throw new Error(_('The job ended before it gave a result; the chain is as its power-cut rules leave it.'));
				if (result.error != null)
					throw new Error(String(result.error));
				return Promise.resolve(done ? done(result) : null).then(() => window.location.reload());
			}).catch(err => { poll.remove(watch); ui.hideModal(); failed(err); });
			/* Each status call starts Python on the router: every 2 s is enough. */
			poll.add(watch, 2);
		}).catch(err => { ui.hideModal(); failed(err); });
	},

	handleSaveConfig() {
		return this.runJob(callSave(false), _('Saving the configuration'));
	},

	handleSnapshot(ev) {
		const message = E('input', { 'type': 'text', 'class': 'cbi-input-text', 'id': 'snapshot-message',
			'maxlength': 255, 'placeholder': _('What this change is') });
		const trial = E('input', { 'type': 'checkbox', 'id': 'snapshot-trial' });
		ui.showModal(_('Take a snapshot'), [
			E('p', {}, [ _('The running configuration becomes a new snapshot. On trial, it is kept only if it is confirmed; otherwise the state before it comes back after a few boots.') ]),
			E('div', {}, [ E('label', { 'for': 'snapshot-message' }, [ _('Message') ]), ' ', message ]),
			E('div', {}, [ trial, ' ', E('label', { 'for': 'snapshot-trial' }, [ _('On trial') ]) ]),
			E('div', { 'class': 'right' }, [
				E('button', { 'class': 'btn', 'click': ui.hideModal }, [ _('Cancel') ]), ' ',
				E('button', { 'class': 'btn cbi-button-action', 'id': 'snapshot-take',
					'click': () => this.runJob(callPush(message.value, trial.checked), _('Taking a snapshot')) },
				[ _('Take snapshot') ])
			])
		]);
	},

	handleConfirm() {
		return callConfirm().then(answered).then(() => window.location.reload()).catch(failed);
	},

	handleRollback(chain, index) {
		const lost = chain.snapshots.filter(s => s.index > index)
			.map(s => E('li', {}, [ _('snapshot %d: %s').format(s.index, s.message) ]));
		if (chain.volatile != null)
			lost.push(E('li', {}, [ _('the saved configuration not yet in a snapshot') ]));
		const target = chain.snapshots[index - 1];
		ui.showModal(_('Roll back to snapshot %d').format(index), [
			E('p', {}, [ _('The router goes back to snapshot %d (%s) and reboots.').format(index, target.message) ]),
			E('p', {}, [ lost.length ? _('This is lost for good:') : _('Nothing is lost.') ]),
			E('ul', { 'class': 'snapshot-lost' }, lost),
			E('div', { 'class': 'right' }, [
				E('button', { 'class': 'btn', 'click': ui.hideModal }, [ _('Cancel') ]), ' ',
				E('button', { 'class': 'btn cbi-button-negative', 'id': 'snapshot-rollback-confirm',
					'disabled': lost.length ? null : true,
					'click': () => this.rollback(index) }, [ _('Roll back and reboot') ])
			])
		]);
	},

	rollback(index) {
		return callRollback(index).then(answered).then(() => callReboot()).then(() => {
			ui.showModal(_('Rebooting…'), [
				E('p', { 'class': 'spinning' }, [ _('The router is rebooting into snapshot %d. This page reloads when it is back.').format(index) ])
			]);
			ui.awaitReconnect();
		}).catch(err => { ui.hideModal(); failed(err); });
	},

	handleSquash() {
		ui.showModal(_('Squash'), [
			E('p', {}, [ _('Every snapshot is merged into one, which holds the same files. The history (and rolling back into it) is lost; flash is freed.') ]),
			E('div', { 'class': 'right' }, [
				E('button', { 'class': 'btn', 'click': ui.hideModal }, [ _('Cancel') ]), ' ',
				E('button', { 'class': 'btn cbi-button-negative',
					'click': () => this.runJob(callSquash(), _('Squashing')) }, [ _('Squash') ])
			])
		]);
	},

	handleCheck(writable) {
		return callCheck().then(answered).then(report => {
			const problems = (report.problems || []).map(p => E('li', {}, [ p ]));
			const lost = (report.lost || []).map(p => E('li', {}, [ p ]));
			const buttons = [ E('button', { 'class': 'btn', 'click': ui.hideModal }, [ _('Close') ]) ];
			if (writable && !report.clean)
				buttons.push(' ', E('button', { 'class': 'btn cbi-button-negative', 'id': 'snapshot-repair',
					'click': () => this.runJob(callRepair(), _('Repairing')) }, [ _('Repair') ]));
			ui.showModal(_('Check'), [
				E('p', {}, [ report.clean ? _('Every record reads back whole: nothing to repair.') : _('The chain needs a repair:') ]),
				E('ul', {}, problems),
				lost.length ? E('p', {}, [ _('A repair would lose:') ]) : '',
				E('ul', { 'class': 'snapshot-lost' }, lost),
				E('div', { 'class': 'right' }, buttons)
			]);
		}).catch(failed);
	},

	handleUpgradeList() {
		return this.runJob(callUpgrade(true, false), _('Looking for upgrades'), result => {
			const changes = result.changes || [];
			ui.addNotification(null, E('div', {}, [
				E('p', {}, [ changes.length ? _('Would upgrade:') : _('Nothing to upgrade.') ]),
				E('ul', { 'id': 'snapshot-upgrades' }, changes.map(c => E('li', {}, [ c ])))
			]), 'info');
			/* Keep the notification: no reload for a list. */
			return new Promise(() => {});
		});
	},

	/* The job does not reboot (the page would lose the router before the job's result):
	 * once the upgrade is stored on trial, the page reboots the router, as for a rollback. */
	handleUpgrade() {
		return this.runJob(callUpgrade(false, true), _('Upgrading the packages'), result => {
			if (result.snapshot == null)
				return;
			return callReboot().then(() => {
				ui.showModal(_('Rebooting…'), [
					E('p', { 'class': 'spinning' }, [ _('Snapshot %d holds the upgrade, on trial: the router reboots to try it.').format(result.snapshot) ])
				]);
				ui.awaitReconnect();
				return new Promise(() => {});
			});
		});
	},

	/* The rows below a snapshot's row: what it changed. */
	handleChanges(index, button) {
		const row = button.closest('tr');
		const open = document.getElementById('snapshot-changes-%d'.format(index));
		if (open) {
			open.remove();
			return;
		}
		return callShow(index, true).then(answered).then(shown => {
			const files = [];
			for (const [ kind, label ] of [ [ 'added', _('added') ], [ 'modified', _('modified') ],
			                              [ 'deleted', _('deleted') ], [ 'opaque', _('replaced') ] ])
				for (const name of shown[kind] || [])
					files.push(E('li', {}, [ E('em', {}, [ label ]), ' /' + name ]));
			const options = [];
			for (const config of shown.uci || []) {
				if (config.problem != null)
					options.push(E('tr', { 'class': 'tr' }, [
						E('td', { 'class': 'td' }, [ config.config ]),
						E('td', { 'class': 'td' }, [ _('not compared: %s').format(config.problem) ]) ]));
				for (const change of config.changes || [])
					options.push(E('tr', { 'class': 'tr', 'data-option': change.option }, [
						E('td', { 'class': 'td' }, [ change.option ]),
						E('td', { 'class': 'td' }, [ uciChange(change) ]) ]));
			}
			const cell = E('td', { 'class': 'td', 'colspan': 6 }, [
				E('ul', { 'class': 'snapshot-files' }, files.length ? files : [ E('li', {}, [ _('No files changed') ]) ]),
				options.length ? E('table', { 'class': 'table snapshot-uci' }, [
					E('tr', { 'class': 'tr table-titles' }, [
						E('th', { 'class': 'th' }, [ _('Option') ]), E('th', { 'class': 'th' }, [ _('Change') ]) ]),
					...options ]) : ''
			]);
			row.after(E('tr', { 'class': 'tr', 'id': 'snapshot-changes-%d'.format(index) }, [ cell ]));
		}).catch(failed);
	},

	renderChain(chain, writable) {
		const rows = chain.snapshots.map(s => E('tr', { 'class': 'tr', 'data-index': s.index }, [
			E('td', { 'class': 'td' }, [ String(s.index) ]),
			E('td', { 'class': 'td snapshot-message' }, [ s.message ]),
			E('td', { 'class': 'td' }, [ when(s.created) ]),
			E('td', { 'class': 'td' }, [ size(s.size) ]),
			E('td', { 'class': 'td snapshot-state' }, [ state(s) ]),
			E('td', { 'class': 'td cbi-section-actions' }, [
				E('button', { 'class': 'btn cbi-button', 'data-action': 'changes',
					'click': ev => this.handleChanges(s.index, ev.currentTarget) }, [ _('Changes') ]),
				writable ? ' ' : '',
				writable ? E('button', { 'class': 'btn cbi-button-negative', 'data-action': 'rollback',
					'click': () => this.handleRollback(chain, s.index) }, [ _('Roll back to here') ]) : ''
			])
		]));
		const volatile = chain.volatile;
		rows.push(E('tr', { 'class': 'tr', 'id': 'snapshot-volatile' }, [
			E('td', { 'class': 'td' }, [ '' ]),
			E('td', { 'class': 'td' }, [ _('Saved configuration, not yet in a snapshot') ]),
			E('td', { 'class': 'td' }, [ volatile ? when(volatile.created) : '' ]),
			E('td', { 'class': 'td' }, [ volatile ? size(volatile.size) : '' ]),
			E('td', { 'class': 'td' }, [ volatile ? state(volatile) : _('none') ]),
			E('td', { 'class': 'td' }, [ '' ])
		]));
		return E('table', { 'class': 'table', 'id': 'snapshot-chain' }, [
			E('tr', { 'class': 'tr table-titles' }, [
				E('th', { 'class': 'th' }, [ _('Number') ]),
				E('th', { 'class': 'th' }, [ _('Message') ]),
				E('th', { 'class': 'th' }, [ _('Date') ]),
				E('th', { 'class': 'th' }, [ _('Size') ]),
				E('th', { 'class': 'th' }, [ _('State') ]),
				E('th', { 'class': 'th' }, [ '' ])
			]),
			...rows
		]);
	},

	renderStatus(chain, status) {
		const lines = [];
		const line = (label, text, id) => lines.push(E('tr', { 'class': 'tr', 'id': id }, [
			E('td', { 'class': 'td left', 'width': '33%' }, [ label ]), E('td', { 'class': 'td left' }, [ text ]) ]));
		line(_('Flash'), _('%s used, %s free').format(size(chain.used_bytes), size(chain.free_bytes)), 'snapshot-flash');
		const trial = status.trial;
		line(_('On trial'), trial ? _('%s, boot %d of %d').format(trial.what, trial.attempts, trial.max_attempts) : _('nothing'), 'snapshot-on-trial');
		const health = status.health;
		if (health) {
			const failing = (health.results || []).filter(r => !r.ok).map(r => r.name);
			line(_('Health checks'), (failing.length ? _('failing: %s').format(failing.join(', ')) : _('every check passed'))
				+ ' (' + when(health.time) + ')', 'snapshot-health');
		}
		const rolled = status.last_rollback;
		line(_('Last automatic rollback'), rolled ? '%s: %s'.format(when(rolled.time), rolled.reason) : _('none'), 'snapshot-last-rollback');
		const bundle = status.bundle;
		if (bundle)
			line(_('Bundle'), _('%s (snapshot %d, %s): %s').format(bundle.id, bundle.snapshot, bundle.state, bundle.message), 'snapshot-bundle');
		const job = status.job;
		if (job && job.state == 'running')
			line(_('Running'), '%s: %s'.format(job.method, job.progress || _('started')), 'snapshot-job');
		return E('table', { 'class': 'table', 'id': 'snapshot-status' }, lines);
	},

	renderActions(status) {
		const button = (label, id, handler, style) => E('button', {
			'class': 'btn ' + (style || 'cbi-button-action'), 'id': id, 'click': ui.createHandlerFn(this, handler) }, [ label ]);
		const actions = [
			button(_('Save configuration'), 'snapshot-save', 'handleSaveConfig'), ' ',
			button(_('Take snapshot…'), 'snapshot-push', 'handleSnapshot'), ' '
		];
		if (status.trial)
			actions.push(button(_('Confirm trial'), 'snapshot-confirm', 'handleConfirm', 'cbi-button-positive'), ' ');
		actions.push(button(_('Squash…'), 'snapshot-squash', 'handleSquash', 'cbi-button-negative'), ' ');
		return E('div', { 'class': 'cbi-section', 'id': 'snapshot-actions' }, [
			E('h3', {}, [ _('Actions') ]), E('div', {}, actions),
			E('h3', {}, [ _('Package upgrades') ]),
			E('p', {}, [ _('An upgrade is installed, stored as a snapshot on trial and tried: the health checks confirm it or roll it back.') ]),
			E('div', {}, [
				button(_('Check for upgrades'), 'snapshot-upgrade-list', 'handleUpgradeList', 'cbi-button'), ' ',
				button(_('Upgrade'), 'snapshot-upgrade', 'handleUpgrade', 'cbi-button-apply')
			])
		]);
	},

	render([ chainReply, statusReply ]) {
		let chain, status;
		try {
			chain = answered(chainReply);
			status = answered(statusReply);
		} catch (err) {
			return E('div', {}, [ E('h2', {}, [ _('Snapshots') ]),
				E('p', { 'class': 'alert-message error snapshot-error' }, [ err.message ]) ]);
		}
		const writable = L.hasViewPermission() === true;
		return E('div', { 'id': 'snapshot-page' }, [
			E('h2', {}, [ _('Snapshots') ]),
			E('div', { 'class': 'cbi-map-descr' }, [ _('The router keeps its configuration as a chain of snapshots on flash: each holds what changed since the one before. A power cut at any moment leaves the state before a change or the state after it.') ]),
			E('div', { 'class': 'cbi-section' }, [ this.renderStatus(chain, status) ]),
			E('div', { 'class': 'cbi-section' }, [
				E('h3', {}, [ _('Chain') ]),
				this.renderChain(chain, writable),
				E('button', { 'class': 'btn cbi-button', 'id': 'snapshot-check',
					'click': ui.createHandlerFn(this, 'handleCheck', writable) }, [ _('Check') ])
			]),
			writable ? this.renderActions(status) : ''
		]);
	},

	/* No Save/Apply/Reset footer: every action here acts at once. */
	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
